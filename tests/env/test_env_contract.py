"""One contract, every Env: the hello-numpy check (2 clients, 1 round, +1) passes on each launcher."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.env import LocalEnv, MpiEnv, SimEnv, SlurmEnv
from tests.conftest import HELLO_MODEL, REPO, events, load_result

HELLO = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()


def make_env(kind: str, root, **kw):
    return {
        "sim": lambda: SimEnv(job_root=root, verbose=False, **kw),
        "local": lambda: LocalEnv(job_root=root, verbose=False, **kw),
        "mpi": lambda: MpiEnv(job_root=root, **kw),
        "slurm-fs": lambda: SlurmEnv(nodes=2, time="00:05:00", job_root=root, **kw),
        "slurm-mpi": lambda: SlurmEnv(nodes=2, time="00:05:00", job_root=root, rendezvous="mpi", **kw),
    }[kind]()


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


@pytest.mark.parametrize("kind", ["sim", "local", "mpi", "slurm-fs", "slurm-mpi"])
def test_every_env_runs_virtual_clients(kind, make_recipe, tmp_path, request):
    """clients_per_rank given to the Env: 5 sites in client ranks of 2 (1 server + 3 ranks under mpiexec/srun)."""
    from tests.runtime.test_client_rank import PER_SITE, expected_mean

    if kind.startswith("slurm"):
        request.getfixturevalue("slurm")
    run = make_recipe(PER_SITE, n_clients=5, min_clients=5).execute(
        make_env(kind, tmp_path / "jobs", clients_per_rank=2)
    )
    result = load_result(run.get_result(timeout=180))
    np.testing.assert_allclose(result["numpy_key"], HELLO_MODEL + expected_mean([1, 2, 3, 4, 5]), rtol=1e-6)
    ranks = [e["site"] for e in events(run.job_dir.root, "server") if e["event"] == "client_rank_registered"]
    assert sorted(ranks) == ["client-rank-1", "client-rank-2", "client-rank-3"]


@pytest.mark.parametrize("kind", ["mpi", "slurm-fs"])
def test_secure_aggregation_on_mpi_and_slurm(kind, make_recipe, tmp_path, request):
    """privacy=secagg under mpiexec and srun: the Exchange messages and the masked sums travel between ranks on
    real launchers; the result equals plain FedAvg's (hello-numpy's +1, exactly up to fixed point)."""
    if kind.startswith("slurm"):
        request.getfixturevalue("slurm")
    recipe = make_recipe(
        HELLO, n_clients=3, min_clients=3, train_args="--update_type diff", privacy={"type": "secagg"}
    )
    run = recipe.execute(make_env(kind, tmp_path / "jobs"))
    result = load_result(run.get_result(timeout=180))
    np.testing.assert_allclose(result["numpy_key"], [[2, 3, 4], [5, 6, 7], [8, 9, 10]], atol=1e-6)
    assert run.get_status()["state"] == "completed"
