"""NVFlare's ``DhPSIRecipe(name, min_clients, local_psi, output_path)`` on hpcflare's PSI.

The ``local_psi`` object built in job.py (a ``PSI`` subclass in a file beside job.py) is rebuilt at every site
from its class and kept constructor arguments, and answers the PSI rounds there
(:func:`hpcflare.client.psi_spec.run_local_psi`); each site writes the intersection to ``output_path`` in its
workspace (``<job>/sites/<site>/``).
"""

from __future__ import annotations

import json
from typing import Any

from hpcflare import recipe as hp
from hpcflare.nvflare.local_files import object_spec, scratch_folder, shipped
from hpcflare.nvflare.recipes import NvflareCalls

SITE_SCRIPT = '''"""A site of an NVFlare-shaped PSI job: its local PSI component, rebuilt from the job's description of it."""
import json
from pathlib import Path

from hpcflare.client.psi_spec import run_local_psi
from {module} import {cls}

spec = json.loads((Path(__file__).parent / "local_psi.json").read_text())
run_local_psi({cls}(**spec["args"]), spec["output_path"])
'''


class DhPSIRecipe(NvflareCalls, hp.PSIRecipe):
    """NVFlare's DhPSIRecipe: private set intersection of the sites' IDs (``min_clients`` sites)."""

    def __init__(
        self,
        *,
        name: str = "dh_psi",
        min_clients: int,
        local_psi: Any,
        output_path: str = "psi/intersection.txt",
        **kwargs: Any,
    ) -> None:
        source, module, cls, args = object_spec(local_psi, "local_psi")
        folder = scratch_folder(self, "hpcflare-psi-")
        (folder / "local_psi.json").write_text(json.dumps({"args": args, "output_path": str(output_path)}))
        script = folder / "psi_site.py"
        script.write_text(SITE_SCRIPT.format(module=module, cls=cls))
        kwargs.setdefault("n_clients", min_clients)
        super().__init__(
            name=name,
            min_clients=min_clients,
            train_script=script,
            extra_files=[folder / "local_psi.json", *shipped(source)],
            **kwargs,
        )


__all__ = ["DhPSIRecipe"]
