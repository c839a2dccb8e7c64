"""Virtual clients on the real Slurm cluster: client ranks hosting several sites each, with mutual TLS."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.cli import main
from hpcflare.slurm import SlurmCommands
from tests.conftest import HELLO_MODEL, events, load_result
from tests.runtime.test_client_rank import CRASH_IN_ROUND_2, PER_SITE, expected_mean
from tests.slurm.test_real_jobs import wait_done

pytestmark = pytest.mark.slurm


def test_client_ranks_across_nodes_with_tls(slurm, make_recipe, tmp_path):
    """12 sites, 4 per client rank: 1 server + 3 client ranks over 3 nodes; only the ranks hold kits."""
    job_dir = make_recipe(PER_SITE, n_clients=12, min_clients=12, num_rounds=2).export(tmp_path / "jobs")
    assert (
        main(
            [
                "job",
                "submit",
                str(job_dir.root),
                "--nodes",
                "3",
                "--time",
                "00:05:00",
                "--clients-per-rank",
                "4",
            ]
        )
        == 0
    )
    assert "#SBATCH --ntasks-per-node=2" in (job_dir.root / "job.sbatch").read_text()  # 4 ranks on 3 nodes
    wait_done(SlurmCommands(), (job_dir.root / "slurm_job_id").read_text().strip(), 180)
    assert job_dir.read_status()["state"] == "completed"
    np.testing.assert_allclose(
        load_result(job_dir.result_model_path)["numpy_key"],
        HELLO_MODEL + 2 * expected_mean(list(range(1, 13))),
        rtol=1e-6,
    )
    server = events(job_dir.root, "server")
    assert next(e for e in server if e["event"] == "server_started")["tls"] is True
    ranks = {e["site"]: e["node"] for e in server if e["event"] == "client_rank_registered"}
    assert (
        sorted(ranks) == ["client-rank-1", "client-rank-2", "client-rank-3"] and len(set(ranks.values())) >= 2
    )
    sites = {e["site"]: e["via"] for e in server if e["event"] == "client_registered"}
    assert sites == {f"site-{i}": f"client-rank-{(i + 3) // 4}" for i in range(1, 13)}
    kits = sorted(p.name for p in (job_dir.root / "kits").iterdir() if p.is_dir())
    assert "client-rank-1" in kits and "site-1" not in kits


def test_a_crashing_virtual_client_does_not_end_its_rank_s_other_sites(slurm, make_recipe, tmp_path):
    job_dir = make_recipe(
        CRASH_IN_ROUND_2, n_clients=4, min_clients=3, num_rounds=3, clients_per_rank=2
    ).export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--nodes", "2", "--time", "00:05:00"]) == 0
    wait_done(SlurmCommands(), (job_dir.root / "slurm_job_id").read_text().strip(), 180)
    assert job_dir.read_status()["state"] == "completed"
    np.testing.assert_array_equal(load_result(job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 3)
    rounds = [e for e in events(job_dir.root, "server") if e["event"] == "round_completed"]
    assert [len(e["accepted"]) for e in rounds] == [
        4,
        3,
        3,
    ]  # site-1, its rank-mate, goes on after site-2 fails
