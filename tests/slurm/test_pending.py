"""A PENDING job's reason in words, from the real scheduler: `hpcflare job status` and `job list`."""

from __future__ import annotations

import json

import pytest

from hpcflare.cli import main
from hpcflare.slurm.commands import explain_reason
from tests.conftest import SLOW


def test_reason_codes_are_explained():
    assert "--begin" in explain_reason("BeginTime")
    assert "lower --time" in explain_reason("(PartitionTimeLimit)")
    assert "scontrol show job" in explain_reason("SomethingNew")


@pytest.mark.slurm
def test_pending_job_says_why_it_waits(slurm, make_recipe, tmp_path, capsys):
    job_dir = make_recipe(SLOW, n_clients=2).export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--nodes", "1", "--sbatch-arg=--begin=now+3600"]) == 0
    try:
        capsys.readouterr()
        assert main(["job", "status", str(job_dir.root)]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["slurm_state"] == "PENDING"
        assert status["pending_reason"].startswith("BeginTime: it was asked to start later")
        assert main(["job", "list"]) == 0
        assert "BeginTime: it was asked to start later" in capsys.readouterr().out
    finally:
        main(["job", "abort", str(job_dir.root)])
