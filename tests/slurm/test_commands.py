"""Slurm command wrappers against an injected runner: the rare outputs and failures."""

from __future__ import annotations

import subprocess

import pytest

from hpcflare.slurm import SlurmCommands, SlurmError, SlurmNotFoundError, SubmissionRejectedError


def runner(responses):
    calls = []

    def run(argv, timeout):
        calls.append(list(argv))
        for prefix, (rc, out, err) in responses.items():
            if argv[0] == prefix:
                return subprocess.CompletedProcess(argv, rc, out, err)
        raise FileNotFoundError(argv[0])

    run.calls = calls
    return run


@pytest.mark.parametrize(
    "stdout, job_id", [("1234\n", "1234"), ("1234;cluster-a\n", "1234"), ("sbatch: warning: x\n77\n", "77")]
)
def test_submit_parses_parsable_output(stdout, job_id, tmp_path):
    assert SlurmCommands(runner({"sbatch": (0, stdout, "")})).submit(tmp_path / "a.sbatch") == job_id


def test_submit_rejection_and_garbage(tmp_path):
    with pytest.raises(SubmissionRejectedError, match="invalid partition"):
        SlurmCommands(runner({"sbatch": (1, "", "sbatch: error: invalid partition specified: x")})).submit(
            tmp_path / "a"
        )
    with pytest.raises(SlurmError, match="could not read a job id"):
        SlurmCommands(runner({"sbatch": (0, "Submitted batch job\n", "")})).submit(tmp_path / "a")


def test_missing_slurm_says_what_to_do(tmp_path):
    with pytest.raises(SlurmNotFoundError, match="dev-cluster-up.sh"):
        SlurmCommands(runner({})).submit(tmp_path / "a")


def test_hung_command_hits_its_deadline(tmp_path):
    def slow(argv, timeout):
        raise subprocess.TimeoutExpired(argv, timeout)

    with pytest.raises(SlurmError, match="did not answer within 3s"):
        SlurmCommands(slow, timeout=3).state("1")


def test_state_falls_back_from_squeue_to_sacct_to_scontrol():
    assert SlurmCommands(runner({"squeue": (0, "RUNNING\n", "")})).state("5") == "RUNNING"
    fake = runner({"squeue": (0, "", ""), "sacct": (0, "COMPLETED\n", "")})
    assert SlurmCommands(fake).state("5") == "COMPLETED"
    fake = runner(
        {
            "squeue": (1, "", "Invalid job id"),
            "sacct": (1, "", "accounting disabled"),
            "scontrol": (0, "JobId=5 JobName=x\n   JobState=CANCELLED Reason=None\n", ""),
        }
    )
    assert SlurmCommands(fake).state("5") == "CANCELLED"
    fake = runner({"squeue": (1, "", ""), "sacct": (1, "", ""), "scontrol": (1, "", "Invalid job id")})
    assert SlurmCommands(fake).state("5") == "UNKNOWN"


def test_list_jobs_parses_rows():
    fake = runner({"squeue": (0, "12|fl|RUNNING|0:05|2|node[1-2]\n13|fl2|PENDING|0:00|1|(Priority)\n", "")})
    jobs = SlurmCommands(fake).list_jobs()
    assert [j["job_id"] for j in jobs] == ["12", "13"] and jobs[1]["reason"] == "(Priority)"
