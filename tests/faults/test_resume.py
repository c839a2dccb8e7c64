"""Resume is a command: a local job whose server was killed continues from its last checkpoint with
`hpcflare job resume JOB_DIR`; no round that completed is lost or run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np

from tests.conftest import HELLO_MODEL, SLOW, events, load_result, wait_for_event, wait_until


def start(make_recipe, local_env):
    """A three-round job whose clients take a second a round (time to kill its server mid-job)."""
    return make_recipe(
        SLOW, n_clients=2, num_rounds=3, train_args="1", settings={"server_lost_timeout": 4}
    ).execute(local_env)


def resume(run) -> subprocess.CompletedProcess:
    """`hpcflare job resume JOB_DIR`, which must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "job", "resume", str(run.job_dir.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_killed_job_resumes_from_its_checkpoint_with_one_command(make_recipe, local_env):
    run = start(make_recipe, local_env)
    wait_until((run.job_dir.models_dir / "checkpoint.json").exists, "round 1's checkpoint")
    os.kill(run.server.pid, signal.SIGKILL)
    run.wait(timeout=120)
    assert run.job_dir.read_status()["state"] == "failed"
    out = resume(run)
    assert "result model:" in out.stdout
    np.testing.assert_array_equal(load_result(run.job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 3)
    server = events(run.job_dir.root, "server")
    resumed = [e for e in server if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] >= 1
    completed = [e["round"] for e in server if e["event"] == "round_completed"]
    # rounds the checkpoint holds are never run again (one killed mid-round is run once more, in the new life)
    assert sorted(set(completed)) == [1, 2, 3]
    assert all(completed.count(r) == 1 for r in range(1, resumed[0]["round"] + 1))
    assert run.job_dir.read_status()["state"] == "completed"


def test_a_round_reported_completed_is_the_one_a_resume_starts_after(make_recipe, local_env):
    """Completed means kept: killed the moment round 1 is logged completed, the job resumes after round 1."""
    run = start(make_recipe, local_env)
    wait_for_event(run.job_dir.root, "server", "round_completed", timeout=120)
    os.kill(run.server.pid, signal.SIGKILL)
    run.wait(timeout=120)
    reported = max(e["round"] for e in events(run.job_dir.root, "server") if e["event"] == "round_completed")
    resume(run)
    resumed = [e for e in events(run.job_dir.root, "server") if e["event"] == "resumed"]
    assert resumed and resumed[0]["round"] >= reported
    np.testing.assert_array_equal(load_result(run.job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 3)
