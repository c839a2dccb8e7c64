"""NVFlare-style client scripts run unmodified (zero-change mode) and with only the imports changed.

``job(script, env_kind, variant, **recipe_kwargs)`` builds a FedAvgRecipe over scripts/<script>; variant
'nvflare' keeps the script as written (nvflare_compat on), 'hpcflare' rewrites its NVFlare imports to
hpcflare's modules and turns the import hook off, proving the script needs nothing else.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcflare.client import nvflare_compat
from hpcflare.env import LocalEnv, SimEnv
from hpcflare.recipe import FedAvgRecipe
from tests.conftest import FAST

SCRIPTS = Path(__file__).parent / "scripts"
IMPORTS = {  # what a user edits when porting by hand: NVFlare module -> the hpcflare module with those names
    "nvflare.client.tracking": "hpcflare.client.tracking",
    "nvflare.client.lightning": "hpcflare.client.lightning",
    "nvflare.client.config": "hpcflare.client.constants",
    "nvflare.client": "hpcflare.client",
    "nvflare.app_common.abstract.fl_model": "hpcflare.client",
    "nvflare.app_common.app_constant": "hpcflare.client.constants",
    "nvflare.app_common.np.constants": "hpcflare.client.constants",
    "nvflare.apis.analytix": "hpcflare.client.constants",
}
VARIANTS = ("nvflare", "hpcflare")
ENVS = ("local", "sim")


def ported(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith(("import nvflare", "from nvflare")):
            for old, new in IMPORTS.items():
                if old in line:
                    line = line.replace(old, new)
                    break
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def no_hook_left_behind():
    """SimEnv runs scripts in this process: never let one test's import hook leak into the next."""
    yield
    nvflare_compat.uninstall()


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Any]:
    def run(script: str, env_kind: str, variant: str, timeout: float = 120, **kwargs: Any) -> Any:
        text = (SCRIPTS / script).read_text()
        path = tmp_path / "src" / script
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if variant == "nvflare" else ported(text))
        assert variant == "hpcflare" or "nvflare" in text
        kwargs.setdefault("initial_model", np.arange(9, dtype=np.float32).reshape(3, 3))
        kwargs.setdefault("min_clients", 2)
        kwargs["settings"] = {**FAST, **kwargs.get("settings", {})}
        kwargs["nvflare_compat"] = "on" if variant == "nvflare" else "off"
        recipe = FedAvgRecipe(name="compat", train_script=path, **kwargs)
        env = (
            LocalEnv(job_root=tmp_path / "jobs", verbose=False)
            if env_kind == "local"
            else SimEnv(job_root=tmp_path / "jobs", verbose=False)
        )
        run = recipe.execute(env)
        run.result = run.get_result(timeout=timeout)
        return run

    return run


def round_metrics(run: Any) -> dict[tuple[int, str, str], float]:
    rows = csv.DictReader(open(run.job_dir.root / "tracking" / "metrics.csv"))
    return {(int(r["round"]), r["site"], r["key"]): float(r["value"]) for r in rows}


def step_rows(run: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run.job_dir.root / "tracking" / "steps.csv")))
