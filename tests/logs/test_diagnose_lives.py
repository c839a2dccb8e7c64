"""Slurm-side truth in diagnose: requeued lives are grouped (no per-rank SIGTERM errors), submitit's time
limit lines name the real cause and fix, killed and cancelled steps are recognised, and once a requeued
job completed nothing it survived is an error."""

from __future__ import annotations

import json

from hpcflare.exitcodes import ExitCode
from hpcflare.logs.diagnose import diagnose, report
from tests.conftest import SLOW


def _write(job_dir, rank, events):
    with open(job_dir.log_dir / f"{rank}.jsonl", "a") as f:
        for e in events:
            f.write(json.dumps({"rank": rank, "level": "info", "msg": e.get("msg", e["event"]), **e}) + "\n")


def _two_lives(job_dir):
    _write(
        job_dir,
        "server",
        [
            {"t": 10, "event": "server_started", "incarnation": "slurm-7-0"},
            {"t": 11, "event": "client_registered", "site": "site-1"},
            {"t": 11, "event": "client_registered", "site": "site-2"},
            {"t": 20, "event": "round_completed", "round": 1},
            {
                "t": 25,
                "level": "error",
                "event": "job_failed",
                "exit_code": int(ExitCode.ABORTED),
                "reason": "aborted: SIGTERM received",
            },
            {"t": 40, "event": "server_started", "incarnation": "slurm-7-1"},
            {"t": 41, "event": "resumed", "round": 1},
            {"t": 42, "event": "client_registered", "site": "site-1"},
            {"t": 42, "event": "client_registered", "site": "site-2"},
            {"t": 50, "event": "round_completed", "round": 2},
        ],
    )
    for site in ("site-1", "site-2"):
        _write(
            job_dir,
            site,
            [
                {
                    "t": 26,
                    "level": "error",
                    "event": "client_failed",
                    "exit_code": int(ExitCode.ABORTED),
                    "reason": "signal 15 received",
                }
            ],
        )


def test_requeued_lives_are_grouped_and_a_completed_job_has_no_errors(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2, num_rounds=2).export(tmp_path / "jobs")
    _two_lives(job_dir)
    job_dir.write_status("completed")
    (job_dir.log_dir / "slurm-7.out").write_text(
        "[hpcflare] time limit near: requeueing job 7\n"
        "slurmstepd: error: *** JOB 7 ON node1 CANCELLED AT x DUE TO TIME LIMIT ***\n"
    )
    findings, summary = diagnose(job_dir)
    assert [f for f in findings if f.severity == "error"] == []
    lives = [f for f in findings if f.what.startswith("life 1 of the job ended after round 1")]
    assert lives and "3 ABORTED" in lives[0].what
    assert summary["rounds_completed"] == 2
    assert "nothing to do" in report(job_dir)


def test_submitit_time_limit_without_checkpoint_names_cause_and_resume(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    (job_dir.root / "slurm").mkdir()
    (job_dir.root / "slurm" / "7_0_log.err").write_text(
        "submitit WARNING (x) - Caught signal SIGUSR2 on node1: this job is timed-out.\n"
        "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out and not checkpointable.\n"
    )
    job_dir.write_status("running")
    text = report(job_dir)
    assert "not checkpointable" in text and "hpcflare job resume" in text


def test_killed_and_cancelled_steps_are_named(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    (job_dir.log_dir / "slurm-9.out").write_text(
        "srun: error: node2: task 2: Killed\nslurmstepd: error: *** STEP 9.0 ON node1 CANCELLED AT 2026 ***\n"
    )
    job_dir.write_status("failed")
    text = report(job_dir)
    assert "killed with signal 9" in text and "--mem" in text
    assert "a job step was cancelled (scancel)" in text
