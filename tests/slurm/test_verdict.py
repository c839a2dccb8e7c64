"""The batch script's exit status is the job's verdict: 0 for a job that completed (even without lost sites), the
first cause's code for a failed one, srun's own status when the job has no final state."""

from __future__ import annotations

import pytest

from hpcflare.job import JobDir, JobState
from hpcflare.slurm.verdict import main, verdict


def _job(tmp_path, state, **fields):
    job = JobDir(tmp_path / "job")
    job.root.mkdir(parents=True)
    if state is not None:
        job.write_status(state, **fields)
    return job.root


def test_a_job_that_completed_without_a_site_exits_0_and_names_it(tmp_path, capsys):
    root = _job(tmp_path, JobState.COMPLETED, lost={"site-3": "dead: no heartbeat for 31s"})
    assert main([str(root), "9"]) == 0
    line = capsys.readouterr().out
    assert "completed without 1 site(s)" in line and "site-3 (dead: no heartbeat" in line


@pytest.mark.parametrize(
    "state, fields, rc, expected",
    [
        (JobState.COMPLETED, {}, 0, 0),
        (JobState.FAILED, {"exit_code": 12, "message": "round 2: too few results"}, 1, 12),
        (JobState.ABORTED, {"exit_code": 15, "message": "aborted"}, 143, 15),
        (JobState.FAILED, {"message": "killed"}, 137, 137),  # no code recorded: srun's
        (JobState.RUNNING, {}, 137, 137),  # no final state (SIGKILL, requeue): srun's
        (None, {}, 1, 1),
    ],
)
def test_the_exit_status_follows_the_jobs_state(tmp_path, state, fields, rc, expected):
    assert verdict(_job(tmp_path, state, **fields), rc)[0] == expected


def test_an_unreadable_status_keeps_sruns_status(tmp_path):
    root = _job(tmp_path, None)
    (root / "status.json").write_text("{not json")
    assert main([str(root), "3"]) == 3
    assert main(["only-one-argument"]) == 2


def test_a_step_that_ended_while_the_job_ran_records_the_killed_server(tmp_path, capsys):
    root = _job(tmp_path, JobState.RUNNING, round=3)
    assert main([str(root), "137"]) == 137
    status = JobDir(root).read_status()
    assert status["state"] == "failed" and status["exit_code"] == 137
    assert "server rank ended without recording an end" in status["message"]
    assert "killed by signal 9" in status["message"] and "killed by signal 9" in capsys.readouterr().out
    JobDir(root).write_status(JobState.COMPLETED)
    assert main([str(root), "137"]) == 0  # a final state is never overwritten


@pytest.mark.parametrize(
    "line, words",
    [
        (
            "2: slurmstepd-node2: error: StepId=77.0 exceeded memory limit (853463040 > 734003200), being killed",
            "task 2 (rank) on node2 went over the job's memory limit (853 MB > 734 MB)",
        ),
        (
            "slurmstepd-node3: error: Detected 1 oom-kill event(s) in StepId=77.0. Some of your processes may "
            "have been killed by the cgroup out-of-memory handler.",
            "a rank on node3 went over the job's memory limit;",
        ),
    ],
)
def test_a_step_killed_for_memory_is_the_jobs_cause(tmp_path, monkeypatch, line, words):
    """Slurm's own lines (OverMemoryKill with numbers, cgroup's OOM kill) in this job's output name the cause;
    the rank's role is said when the job's config can tell it (here there is none: 'rank')."""
    root = _job(tmp_path, JobState.RUNNING, round=2)
    (root / "logs").mkdir()
    (root / "logs" / "slurm-77.out").write_text(
        f"[hpcflare] slurm job 77\n{line}\nsrun: error: task 2: Killed\n"
    )
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    code, said = verdict(root, 137)
    status = JobDir(root).read_status()
    assert code == 33 and status["exit_code"] == 33 and status["state"] == "failed"
    assert (
        status["message"].startswith("Slurm killed the job step for memory (OUT_OF_MEMORY): ")
        and words in (status["message"])
    ), status["message"]
