"""Restarts mid-job: the standing server and a site agent each come back and the job completes."""

from __future__ import annotations

import time

import numpy as np
import safetensors.numpy

from tests.federation.conftest import wait_state

SITES = ["site-1", "site-2"]


def _wait_round(federation, job_id, number, timeout=180):
    with federation.session("root") as s:
        deadline = time.monotonic() + timeout
        while True:
            status = s.get_job_status(job_id)
            if int(status["server"].get("round") or 0) >= number:
                return
            assert status["state"] in ("waiting_for_sites", "running"), status
            assert time.monotonic() < deadline, status
            time.sleep(0.3)


def _result(federation, job_id, tmp_path):
    with federation.session("alice") as admin:
        folder = admin.download_job_result(job_id, tmp_path / "results")
    return safetensors.numpy.load_file(str(folder / "job" / "models" / "global_model.safetensors"))["w"]


def test_the_standing_server_restarted_mid_job(federation, tmp_path):
    federation.up(SITES)
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=5, sleep=1.0))
    _wait_round(federation, job_id, 2)
    federation.kill("server")  # SIGKILL: no goodbye, the job store is all that is left
    time.sleep(2)
    federation.start_server()
    assert "looking after its running server rank again" in federation.output("server")
    with federation.session("alice") as admin:
        status = wait_state(admin, job_id, ("done", "failed"), timeout=240)
    assert status["state"] == "done", status
    np.testing.assert_allclose(_result(federation, job_id, tmp_path), np.full(3, 7.5))  # (1+2)/2 x 5
    with federation.session("root") as root:  # the agents found the server again and reported their ends
        deadline = time.monotonic() + 240
        while {v["state"] for v in root.get_job_status(job_id)["sites"].values()} != {"done"}:
            assert time.monotonic() < deadline, root.get_job_status(job_id)["sites"]
            time.sleep(0.3)


def test_a_site_agent_restarted_mid_job(federation, tmp_path):
    federation.up(SITES)
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=5, sleep=1.0))
    _wait_round(federation, job_id, 2)
    federation.kill("site-2")  # its client rank keeps training: it runs in a session of its own
    time.sleep(1)
    federation.start_agent("site-2")
    with federation.session("alice") as admin:
        status = wait_state(admin, job_id, ("done", "failed"), timeout=240)
        assert status["state"] == "done", status
        deadline = time.monotonic() + 240
        while admin.get_job_status(job_id)["sites"]["site-2"]["state"] != "done":
            assert time.monotonic() < deadline, admin.get_job_status(job_id)["sites"]
            time.sleep(0.3)
    assert "looking after the ranks of" in federation.output("site-2")
    np.testing.assert_allclose(_result(federation, job_id, tmp_path), np.full(3, 7.5))


def test_a_site_whose_launcher_is_its_own_slurm_cluster(federation, slurm, tmp_path):
    """site-2 runs its client rank as an sbatch job on its own (real) Slurm cluster, with its partition and
    time from site.yaml; the server and site-1 run locally."""
    federation.start_server()
    federation.start_agent("site-1")
    federation.start_agent("site-2", launcher="slurm", slurm={"partition": "debug", "time_minutes": 10})
    federation.wait_connected(SITES)
    seen: list[str] = []
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=2))
        admin.monitor_job(
            job_id,
            timeout=400,
            callback=lambda status: seen.append(status["sites"]["site-2"].get("detail", "")) or True,
        )
        status = wait_state(admin, job_id, ("done", "failed"), timeout=60)
    assert status["state"] == "done", status
    assert any("Slurm job" in detail for detail in seen), seen  # its state, in Slurm's words
    work = federation.site_dir("site-2") / "work" / "jobs" / job_id / "job" / "launch"
    script = (work / "site-2.sbatch").read_text()
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=10" in script
    np.testing.assert_allclose(_result(federation, job_id, tmp_path), np.full(3, 3.0))  # (1+2)/2 x 2


def test_the_jobs_server_rank_as_a_slurm_job(federation, slurm, tmp_path):
    """server.yaml launcher: slurm: each job's server rank is an sbatch job on the server's own cluster; the
    sites learn its address from where it published it."""
    federation.server_settings_yaml = {
        "launcher": "slurm",
        "slurm": {"partition": "debug", "time_minutes": 10},
    }
    federation.up(SITES)
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=2))
        status = wait_state(admin, job_id, ("done", "failed"), timeout=400)
    assert status["state"] == "done", status
    launch = federation.server_dir / "ws" / "jobs" / job_id / "job" / "launch" / "server.sbatch"
    assert "#SBATCH --partition=debug" in launch.read_text()
    np.testing.assert_allclose(_result(federation, job_id, tmp_path), np.full(3, 3.0))


def test_a_jobs_server_rank_killed_mid_job_resumes_from_its_checkpoint(federation, tmp_path):
    federation.up(SITES)
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=5, sleep=1.0))
    _wait_round(federation, job_id, 3)
    server_json = federation.server_dir / "ws" / "jobs" / job_id / "job" / "rendezvous" / "server.json"
    import json
    import os
    import signal

    os.kill(json.loads(server_json.read_text())["pid"], signal.SIGKILL)  # the rank itself, not the wrapper
    with federation.session("alice") as admin:
        status = wait_state(admin, job_id, ("done", "failed"), timeout=300)
    assert status["state"] == "done", status
    assert "restarted from its last checkpoint" in federation.output("server")
    np.testing.assert_allclose(_result(federation, job_id, tmp_path), np.full(3, 7.5))
