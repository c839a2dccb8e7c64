"""SlurmEnv specifics: dry_run shows the sbatch script without submitting; abort cancels the Slurm job."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from hpcflare.env import SlurmEnv
from hpcflare.errors import ConfigError
from hpcflare.slurm import SlurmCommands


def test_dry_run_prints_sbatch_and_submits_nothing(make_recipe, tmp_path):
    env = SlurmEnv(
        nodes=2,
        ntasks_per_node=2,
        partition="debug",
        time="01:30:00",
        job_root=tmp_path / "jobs",
        rendezvous="mpi",
    )
    text = env.dry_run(make_recipe("print(1)\n", n_clients=3, min_clients=2))
    assert text.startswith("#!/bin/bash")
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --partition=debug",
        "#SBATCH --time=90",
        "#SBATCH --requeue",
    ):
        assert line in text
    assert "srun --unbuffered" in text and "--mpi=pmi2" in text and "submitit.core._submit" in text
    jobs = list((tmp_path / "jobs").iterdir())
    assert len(jobs) == 1 and (jobs[0] / "job.sbatch").read_text() == text
    assert not (jobs[0] / "slurm").exists() or not any((jobs[0] / "slurm").glob("*submitted.pkl"))


def test_too_few_tasks_is_a_config_error(make_recipe, tmp_path):
    env = SlurmEnv(nodes=1, ntasks_per_node=2, job_root=tmp_path / "jobs", clients_per_rank=1)
    with pytest.raises(ConfigError, match="1 nodes x 2 tasks < 4 ranks"):
        env.dry_run(make_recipe("print(1)\n", n_clients=3, min_clients=2))


def test_auto_packs_the_sites_into_the_tasks_asked_for(make_recipe, tmp_path):
    env = SlurmEnv(nodes=1, ntasks_per_node=2, job_root=tmp_path / "jobs")  # clients_per_rank 'auto'
    text = env.dry_run(make_recipe("print(1)\n", n_clients=3, min_clients=2))
    assert "#SBATCH --ntasks-per-node=2" in text  # the server + one client rank running the 3 sites
    job_dir = next((tmp_path / "jobs").iterdir())
    assert (
        yaml.safe_load((job_dir / "job.yaml").read_text())["clients_per_rank"] == "auto"
    )  # dry run: unchanged


@pytest.mark.slurm
def test_abort_cancels_the_slurm_job(slurm, make_recipe, tmp_path):
    script = "import time, hpcflare.client as flare\nflare.init()\ntime.sleep(300)\n"
    run = make_recipe(script).execute(SlurmEnv(nodes=1, time="00:05:00", job_root=tmp_path / "jobs"))
    commands = SlurmCommands()
    deadline = time.monotonic() + 60
    while commands.state(run.slurm_job_id) != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    run.abort()
    assert run.wait(timeout=60)
    squeue = subprocess.run(["squeue", "-h", "-j", run.slurm_job_id], capture_output=True, text=True)
    assert run.slurm_job_id not in squeue.stdout


@pytest.mark.slurm
def test_a_slurmenv_job_survives_five_time_limit_requeues_and_completes(slurm, make_recipe, tmp_path):
    """Five times the job gets the signal Slurm sends before its time limit (USR2, which submitit counts as a
    time-out in a job this short): submitit checkpoints and requeues it, the server resumes from its last
    completed round each time, and the job completes with every round (submitit's own default stops at 3)."""
    import numpy as np

    from tests.conftest import HELLO_MODEL, SLOW, events, load_result

    rounds, signals = 8, 5
    run = make_recipe(SLOW, n_clients=2, num_rounds=rounds, train_args="1").execute(
        SlurmEnv(nodes=2, time="00:10:00", job_root=tmp_path / "jobs", clients_per_rank=1)
    )
    job, commands = run.job_dir, SlurmCommands()
    sent: list[int] = []
    deadline = time.monotonic() + 600
    while len(sent) < signals:
        assert time.monotonic() < deadline, f"only {len(sent)} requeues by the deadline"
        server = events(job.root, "server") if (job.root / "logs" / "server.jsonl").exists() else []
        lives = sum(e["event"] == "server_started" for e in server)
        done = [e["round"] for e in server if e["event"] == "round_completed"]
        # one signal per life, once this life has completed a round (so every life makes progress)
        if lives == len(sent) + 1 and done and max(done) > (sent[-1] if sent else 0):
            assert commands.state(run.slurm_job_id) == "RUNNING"
            subprocess.run(["scancel", "--signal=USR2", run.slurm_job_id], check=True)
            sent.append(max(done))
        time.sleep(0.5)
    result = load_result(run.get_result(timeout=300))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + rounds)
    server = events(job.root, "server")
    assert sum(e["event"] == "resumed" for e in server) == signals
    assert sorted({e["round"] for e in server if e["event"] == "round_completed"}) == list(
        range(1, rounds + 1)
    )
    assert job.read_status()["state"] == "completed"


def test_the_requeues_a_job_may_resume_from_reach_submitit(make_recipe, tmp_path):
    """submitit's own default (3 time limits) would end a long training; settings.max_requeues sets it, and
    slurm_args={'max_num_timeout': N}, submitit's own name, is taken too."""
    job_dir = make_recipe("print(1)\n", n_clients=2, settings={"max_requeues": 9}).export(tmp_path / "jobs")
    assert SlurmEnv(nodes=1).executor(job_dir).max_num_timeout == 9
    assert SlurmEnv(nodes=1, slurm_args={"max_num_timeout": 5}).executor(job_dir).max_num_timeout == 5
    with pytest.raises(ConfigError, match="max_num_timeout must be >= 0"):
        SlurmEnv(nodes=1, slurm_args={"max_num_timeout": -1}).executor(job_dir)
