"""``nvflare.recipe.fedstats.FedStatsRecipe``: federated statistics from an NVFlare ``Statistics`` generator.

The generator object built in job.py is rebuilt at every site from its class (its module ships with the job, with
the local modules it imports) and its constructor arguments (read back from the attributes of the same names, as
NVFlare's job configuration does); each site runs :func:`hpcflare.client.statistics_spec.run_generator` with
it. The server writes the result to ``stats_output_path`` inside the job's folder, in NVFlare's layout.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hpcflare.nvflare.local_files import object_spec, scratch_folder, shipped
from hpcflare.nvflare.recipes import NvflareCalls
from hpcflare.recipe.nvflare_keywords import note

SITE_SCRIPT = '''"""A site of a federated statistics job: its generator, rebuilt from the job's description of it."""
import json
from pathlib import Path

from hpcflare.client.statistics_spec import run_generator
from {module} import {cls}

args = json.loads((Path(__file__).parent / "stats_generator.json").read_text())["args"]
run_generator({cls}(**args))
'''


class FedStatsRecipe(NvflareCalls):
    """NVFlare's FedStatsRecipe(name, stats_output_path, sites, statistic_configs, stats_generator, min_count)."""

    strategy = "spec_stats"

    def __init__(
        self,
        *,
        name: str,
        stats_output_path: str,
        sites: list[str],
        statistic_configs: dict[str, Any],
        stats_generator: Any,
        min_count: int = 10,
        **kwargs: Any,
    ) -> None:
        for key in sorted(kwargs):
            note(f"FedStatsRecipe({key}=...)", "accepted; no effect here")
        source, module, cls, args = object_spec(stats_generator, "stats_generator")
        folder = scratch_folder(self, "hpcflare-stats-")
        (folder / "stats_generator.json").write_text(json.dumps({"class": f"{module}.{cls}", "args": args}))
        script = folder / "stats_site.py"
        script.write_text(SITE_SCRIPT.format(module=module, cls=cls))
        super().__init__(
            name=name,
            model={"stats.json": np.zeros(1, np.uint8)},
            min_clients=len(sites),
            num_rounds=2,
            train_script=script,
            clients=list(sites),
            extra_files=[folder / "stats_generator.json", *shipped(source)],
        )
        self.strategy_args = {
            "statistic_configs": dict(statistic_configs),
            "output_path": str(stats_output_path),
            "min_count": int(min_count),
        }


__all__ = ["FedStatsRecipe"]
