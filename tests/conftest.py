"""Shared fixtures: build real job directories from inline client scripts and run them for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from hpcflare.env import LocalEnv, SimEnv
from hpcflare.recipe import FedAvgRecipe
from hpcflare.transport.api import UpdateKind, UploadHeader

REPO = Path(__file__).resolve().parents[1]
HELLO_MODEL = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)
FAST = {
    "registration_timeout": 20,
    "round_timeout": 30,
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 3,
    "task_poll_timeout": 2,
    "server_lost_timeout": 8,
    "end_grace": 3,
    "rendezvous_timeout": 20,
    "stream_timeout": 30,
    "stream_idle_timeout": 15,
}


# every client "trains" for argv[1] seconds (default 1.5) and adds 1
SLOW = """
import sys, time
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.5)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def header(site: str = "s", params_type: str = "FULL", **sections: Any) -> UploadHeader:
    """An upload header for transport-level tests (site, empty token, task 'task', round 1)."""
    return UploadHeader(site, "", "task", 1, UpdateKind(params_type), **sections)


@pytest.fixture
def make_recipe(tmp_path: Path) -> Callable[..., FedAvgRecipe]:
    """make_recipe(script_text, **recipe_kwargs): a FedAvgRecipe over the hello model with fast deadlines."""

    def build(script: str, **kwargs: Any) -> FedAvgRecipe:
        path = tmp_path / "src" / "client.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(script))
        settings = {**FAST, **kwargs.pop("settings", {})}
        kwargs.setdefault("model", {"numpy_key": HELLO_MODEL})
        kwargs.setdefault("min_clients", 2)
        kwargs.setdefault("num_rounds", 1)
        return FedAvgRecipe(name="t", train_script=path, settings=settings, **kwargs)

    return build


@pytest.fixture
def local_env(tmp_path: Path) -> LocalEnv:
    return LocalEnv(job_root=tmp_path / "jobs", verbose=False)


@pytest.fixture
def sim_env(tmp_path: Path) -> SimEnv:
    return SimEnv(job_root=tmp_path / "jobs", verbose=False)


def load_result(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


def events(job_dir: Path, rank: str) -> list[dict]:
    path = job_dir / "logs" / f"{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(ready: Callable[[], Any], what: str, timeout: float = 60) -> None:
    """Poll ``ready()`` every 0.1 s until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g}s"
        time.sleep(0.1)


def wait_for_event(job_dir: Path, rank: str, name: str, timeout: float = 60) -> None:
    wait_until(lambda: any(e["event"] == name for e in events(job_dir, rank)), f"{rank}: {name}", timeout)


def slurm_available() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def slurm() -> None:
    """Skip (or, with HPCFLARE_REQUIRE_SLURM=1 as in CI, fail) when the dev Slurm cluster is not up."""
    if not slurm_available():
        msg = "no running Slurm cluster: run `bash slurm/dev-cluster-up.sh` (as root) first"
        if os.environ.get("HPCFLARE_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
