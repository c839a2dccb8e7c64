"""Why Slurm ends a job, as the server asks it at SIGTERM: sacct's state (every life, the last one counts),
else scontrol's reason; each state becomes the error the job ends with."""

from __future__ import annotations

import os
import stat

import pytest

from hpcflare.exitcodes import ExitCode, exit_for
from hpcflare.runtime.cluster.scheduler_end import ending_error, slurm_state


@pytest.mark.parametrize(
    "state, code, words",
    [
        ("NODE_FAIL", ExitCode.NODE_LOST, "Slurm lost a node of job 7 (NODE_FAIL)"),
        ("TIMEOUT", ExitCode.TIME_LIMIT, "Slurm job 7 reached its time limit (TIMEOUT; requeued 2 time(s)"),
        ("CANCELLED", ExitCode.ABORTED, "Slurm job 7 was cancelled (scancel or hpcflare job abort)"),
        ("REQUEUED", ExitCode.ABORTED, "Slurm requeued job 7: its next life resumes"),
        ("PREEMPTED", ExitCode.ABORTED, "Slurm preempted job 7"),
    ],
)
def test_each_slurm_end_becomes_its_error(state, code, words):
    error = ending_error({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}, lambda job: state)
    assert error is not None and exit_for(error) == (code, str(error)) and str(error).startswith(words)


def test_outside_slurm_or_without_an_answer_nothing_is_claimed():
    assert ending_error({}, lambda job: "NODE_FAIL") is None
    assert ending_error({"SLURM_JOB_ID": "7"}, lambda job: "") is None
    assert ending_error({"SLURM_JOB_ID": "7"}, lambda job: "RUNNING") is None


def _fake(tmp_path, name: str, out: str, rc: int = 0) -> None:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\nprintf '%s' '{out}'\nexit {rc}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_sacct_s_last_life_counts_and_scontrol_s_reason_stands_in(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake(tmp_path, "sacct", "REQUEUED\nCANCELLED by 0\n")  # -D: an earlier life, then this one
    assert slurm_state("7") == "CANCELLED"
    _fake(tmp_path, "sacct", "", rc=1)  # no accounting (no slurmdbd)
    _fake(tmp_path, "scontrol", "JobId=7 JobState=COMPLETING Reason=NodeDown Dependency=(null)")
    assert slurm_state("7") == "NODE_FAIL"
    _fake(tmp_path, "scontrol", "JobId=7 JobState=COMPLETING Reason=TimeLimit")
    assert slurm_state("7") == "TIMEOUT"
    _fake(tmp_path, "scontrol", "JobId=7 JobState=COMPLETING Reason=None")
    assert slurm_state("7") == ""  # scancel and requeue look alike here: say nothing rather than guess
