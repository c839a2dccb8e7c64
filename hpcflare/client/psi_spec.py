"""NVFlare's PSI spec, site side: a ``PSI`` component whose ``load_items()`` gives this site's IDs, and
:func:`run_local_psi`, the site loop of NVFlare's ``DhPSIRecipe`` on hpcflare's PSI (:mod:`hpcflare.tabular.psi`).

The IDs leave the site only as curve points under secret keys; the intersection (the IDs every site holds) is
written to ``output_path`` inside this site's workspace, one ID per line, as NVFlare's FilePSIWriter does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from hpcflare.client import api as flare
from hpcflare.client.model import FLModel
from hpcflare.client.statistics_spec import FLContext
from hpcflare.errors import ConfigError
from hpcflare.tabular.psi import PsiSite


class PSI(ABC):
    """NVFlare's local PSI component: ``load_items`` returns this site's IDs (unique strings); ``fl_ctx`` tells
    it the site (``fl_ctx.get_identity_name()``)."""

    def __init__(self, psi_writer_id: str = "psi_writer") -> None:
        self.psi_writer_id = psi_writer_id
        self.fl_ctx: Any = None

    @abstractmethod
    def load_items(self) -> list[str]:
        """This site's IDs."""


def output_file(workspace: Path, output_path: str) -> Path:
    """Where the intersection goes: ``output_path`` inside the site's workspace. A path outside it (absolute,
    or climbing out) is refused: the job, not the site, names it."""
    target = (workspace / output_path).resolve()
    if Path(output_path).is_absolute() or not target.is_relative_to(workspace.resolve()):
        raise ConfigError(
            f"PSI output_path {output_path!r} leaves the site's workspace; give a path inside it"
        )
    return target


def run_local_psi(psi: PSI, output_path: str) -> None:
    flare.init()
    site = flare.get_site_name()
    psi.fl_ctx = FLContext(site, flare.get_job_id())
    items = [str(item) for item in psi.load_items()]
    if not items:
        raise ConfigError(f"{site}: {type(psi).__name__}.load_items() returned no IDs")
    local = PsiSite(site, items)
    while flare.is_running():
        task = flare.receive()
        flare.send(FLModel(params=local.answer(task.params, task.meta)))
    if local.intersection is not None:
        out = output_file(flare.get_workspace(), output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(f"{item}\n" for item in local.intersection))
        print(
            f"{site}: {len(local.intersection)} of {len(set(items))} IDs in the intersection -> {out}",
            flush=True,
        )
