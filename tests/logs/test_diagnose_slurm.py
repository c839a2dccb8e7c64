"""diagnose reads Slurm's accounting (sacct): OOM kills, time limits, cancellations of the job's steps."""

from __future__ import annotations

import subprocess
import time

import pytest

from hpcflare.cli import main
from hpcflare.logs.diagnose import report
from hpcflare.slurm import SlurmCommands
from tests.conftest import SLOW, events
from tests.slurm.test_real_jobs import wait_done

SACCT_OOM = (
    "4242|hpcflare|OUT_OF_MEMORY|0:125|||00:01:10|node[1-2]\n"
    "4242.batch|batch|OUT_OF_MEMORY|0:125|2004K|8G|00:01:10|node1\n"
    "4242.0|hpcflare-rank|OUT_OF_MEMORY|0:125|7998M|8G|00:01:09|node[1-2]\n"
)


def fake_sacct(stdout: str, rc: int = 0):
    calls = []

    def run(argv, timeout):
        calls.append(list(argv))
        return subprocess.CompletedProcess(
            argv, rc, stdout, "sacct: error: Slurm accounting storage is disabled" if rc else ""
        )

    return run, calls


def test_oom_kill_from_sacct_names_memory_and_fix(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    (job_dir.root / "slurm_job_id").write_text("4242\n")
    runner, calls = fake_sacct(SACCT_OOM)
    text = report(job_dir, SlurmCommands(runner))
    assert calls and calls[0][:2] == ["sacct", "-n"] and "4242" in calls[0]
    assert (
        "Slurm step 4242.0 (hpcflare-rank) ran out of memory (OOM kill) (MaxRSS 7998M of 8G requested)"
        in text
    )
    assert "--mem" in text and "enable staging and relays" in text


def test_without_accounting_diagnose_still_works(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    (job_dir.root / "slurm_job_id").write_text("4242\n")
    runner, _ = fake_sacct("", rc=1)
    assert "sacct" not in report(job_dir, SlurmCommands(runner))


@pytest.mark.slurm
def test_cancelled_slurm_job_is_reported_from_sacct(slurm, make_recipe, tmp_path, capsys):
    job_dir = make_recipe(SLOW, n_clients=2, num_rounds=50, train_args="5").export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--nodes", "2", "--time", "00:05:00"]) == 0
    job_id = (job_dir.root / "slurm_job_id").read_text().strip()
    deadline = time.monotonic() + 120
    while not any(e["event"] == "task_received" for e in events(job_dir.root, "site-1")):
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.5)
    assert main(["job", "abort", str(job_dir.root)]) == 0
    wait_done(SlurmCommands(), job_id, 120)
    deadline = time.monotonic() + 60  # slurmdbd records the final state a moment later
    while "CANCELLED" not in " ".join(s["State"] for s in SlurmCommands().accounting(job_id)):
        assert time.monotonic() < deadline, "sacct never showed the cancellation"
        time.sleep(1)
    capsys.readouterr()
    assert main(["logs", "diagnose", str(job_dir.root)]) == 0
    text = capsys.readouterr().out
    assert f"sacct: Slurm step {job_id}" in text and "was cancelled" in text and "scancel" in text
