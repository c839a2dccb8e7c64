"""One contract, every Env: the hello-numpy check (2 clients, 1 round, +1) passes on each launcher."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.env import LocalEnv, MpiEnv, SimEnv, SlurmEnv
from tests.conftest import REPO, load_result

HELLO = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()


def make_env(kind: str, root):
    return {"sim": lambda: SimEnv(job_root=root, verbose=False),
            "local": lambda: LocalEnv(job_root=root, verbose=False),
            "mpi": lambda: MpiEnv(job_root=root),
            "slurm-fs": lambda: SlurmEnv(nodes=2, time="00:05:00", job_root=root),
            "slurm-mpi": lambda: SlurmEnv(nodes=2, time="00:05:00", job_root=root, rendezvous="mpi")}[kind]()


@pytest.mark.parametrize("kind", ["sim", "local", "mpi", "slurm-fs", "slurm-mpi"])
def test_every_env_runs_hello_numpy(kind, make_recipe, tmp_path, request):
    if kind.startswith("slurm"):
        request.getfixturevalue("slurm")
    recipe = make_recipe(HELLO, train_args="--update_type diff")
    run = recipe.execute(make_env(kind, tmp_path / "jobs"))
    result = load_result(run.get_result(timeout=180))
    np.testing.assert_array_equal(result["numpy_key"], [[2, 3, 4], [5, 6, 7], [8, 9, 10]])
    status = run.get_status()
    assert status["state"] == "completed" and status["round"] == 1
    assert run.get_job_id() == run.job_dir.root.name
