"""FlowerRecipe: an unmodified Flower app (ServerApp + ClientApp, a pyproject.toml with [tool.flwr.app]) run by
Flower's own engine on hpcflare's launcher, in every Env (see hpcflare.runtime.flower)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: Flower brings tomli
    import tomli as tomllib  # type: ignore[no-redef]

from hpcflare.errors import ConfigError
from hpcflare.job import JobDir
from hpcflare.recipe.api import Recipe

SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".venv", "*.egg-info", "jobs")


def read_app(app_dir: Path) -> dict[str, Any]:
    """The app's pyproject.toml, checked to be a Flower app's."""
    project = app_dir / "pyproject.toml"
    if not project.is_file():
        raise ConfigError(f"{app_dir} is not a Flower app: no pyproject.toml (make one with `flwr new`)")
    try:
        data = tomllib.loads(project.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{project} cannot be read as TOML: {exc}") from None
    components = data.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if not isinstance(components, dict) or not {"serverapp", "clientapp"} <= set(components):
        raise ConfigError(
            f"{project} names no Flower app: [tool.flwr.app.components] needs serverapp and clientapp"
        )
    return data


class FlowerRecipe(Recipe):
    """``FlowerRecipe(app_dir="my-app", n_clients=4, num_rounds=3, run_config={"lr": 0.1})``: one SuperNode per
    site, with node config ``partition-id``/``num-partitions``; ``num_rounds`` overrides the app's
    ``num-server-rounds`` (None: the app's own). The result (``Run.get_result()``) is the Flower run's output,
    ``models/flower_output.txt``."""

    strategy = "flower"

    def __init__(
        self,
        app_dir: str | Path,
        n_clients: int = 2,
        num_rounds: int | None = None,
        run_config: dict[str, Any] | None = None,
        port: int = 0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = Path(app_dir).resolve()
        data = read_app(self.app)
        if kwargs.get("relays"):
            raise ConfigError("a Flower app aggregates on its SuperLink's ServerApp: use relays=0")
        app_rounds = (
            data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}).get("num-server-rounds")
        )
        kwargs.setdefault("min_clients", n_clients)
        super().__init__(
            name=name or re.sub(r"[^A-Za-z0-9_.-]", "-", self.app.name) or "flower",
            model={"flower": np.zeros(1, np.uint8)},
            num_rounds=int(num_rounds or app_rounds or 1),
            train_script=self.app / "pyproject.toml",
            n_clients=n_clients,
            **kwargs,
        )
        self.strategy_args = {"num_rounds": num_rounds, "run_config": dict(run_config or {}), "port": port}

    def export(self, job_root: str | Path, job_id: str | None = None) -> JobDir:
        job_dir = super().export(job_root, job_id)
        shutil.copytree(self.app, job_dir.app_dir, ignore=SKIP, dirs_exist_ok=True)
        return job_dir
