"""One first cause on the real Slurm cluster: for the failures only Slurm can cause (a lost node, scancel, the
time limit), status.json, `hpcflare job status`, Run's exception, diagnose's first finding and Slurm's own final
state agree, and the ranks Slurm stopped with the job are told as its consequence, not as causes.

A node is lost with `scontrol update state=down` on the emulated node running a client rank: Slurm ends the
job's steps DUE TO NODE FAILURE, as it does when a real node stops answering."""

from __future__ import annotations

import json
import re
import subprocess
import time

import numpy as np
import pytest

from hpcflare.env import SlurmEnv
from hpcflare.errors import JobFailedError
from hpcflare.job import JobDir
from hpcflare.logs.diagnose import diagnose
from hpcflare.slurm import SlurmCommands
from tests.conftest import HELLO_MODEL, REPO, SLOW, events, load_result
from tests.slurm.test_real_jobs import wait_done

pytestmark = pytest.mark.slurm
HPCFLARE = str(REPO / ".venv" / "bin" / "hpcflare")


def _round_completed(job_dir: JobDir, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (job_dir.log_dir / "server.jsonl").exists() or not any(
        e["event"] == "round_completed" for e in events(job_dir.root, "server")
    ):
        assert time.monotonic() < deadline, "no round completed"
        time.sleep(0.5)


def _lose_a_client_node(job_id: str) -> str:
    """Mark the job's last node (client ranks only: the server is rank 0, on the first) down, as a node that
    stopped answering; the emulated node registers again by itself right after."""
    nodes = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True).stdout
    node = subprocess.run(
        ["scontrol", "show", "hostnames", nodes.strip()], capture_output=True, text=True
    ).stdout.split()[-1]
    subprocess.run(
        ["scontrol", "update", f"nodename={node}", "state=down", "reason=hpcflare-test"], check=True
    )
    return node


@pytest.fixture
def lost_nodes():
    """Nodes a test marked down come back for the next tests (the emulated node usually registers again by
    itself; if not, it is resumed)."""
    nodes: list[str] = []
    yield nodes
    for node in nodes:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True)
            if "down" not in state.stdout and "drain" not in state.stdout:
                break
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
            time.sleep(1)


def _errors(job_dir: JobDir) -> list[str]:
    findings, _ = diagnose(job_dir, SlurmCommands())
    return [f.what for f in findings if f.severity == "error"]


def _cli_status(job_dir: JobDir) -> dict:
    out = subprocess.run([HPCFLARE, "job", "status", str(job_dir.root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _submit(job_dir: JobDir, *flags: str) -> str:
    out = subprocess.run(
        [HPCFLARE, "job", "submit", str(job_dir.root), "--nodes", "2", *flags], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return (job_dir.root / "slurm_job_id").read_text().strip()


def test_a_lost_node_is_survived_by_slurms_requeue_and_told_as_info(slurm, make_recipe, tmp_path, lost_nodes):
    """SlurmEnv jobs ask Slurm to requeue them: a lost node ends the life, Slurm restarts the job, it resumes
    from its checkpoint and completes; nothing is an error, and the lost node is named."""
    rounds = 12
    run = make_recipe(SLOW, n_clients=2, num_rounds=rounds, train_args="1").execute(
        SlurmEnv(nodes=2, time="00:05:00", job_root=tmp_path / "jobs", clients_per_rank=1)
    )
    _round_completed(run.job_dir)
    lost_nodes.append(_lose_a_client_node(run.slurm_job_id))
    result = load_result(run.get_result(timeout=300))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + rounds)
    assert run.job_dir.read_status()["state"] == "completed"
    assert SlurmCommands().state(run.slurm_job_id) == "COMPLETED"
    findings, _ = diagnose(run.job_dir, SlurmCommands())
    assert [f.what for f in findings if f.severity == "error"] == [], findings
    assert any("lost a node" in f.what for f in findings), findings
    first_life = [e for e in events(run.job_dir.root, "server") if e["event"] == "job_failed"][0]
    assert first_life["reason"].startswith(f"Slurm lost a node of job {run.slurm_job_id} (NODE_FAIL)")


def test_a_lost_node_without_requeue_fails_the_job_naming_it(slurm, make_recipe, tmp_path, lost_nodes):
    job_dir = make_recipe(SLOW, n_clients=2, num_rounds=40, train_args="1").export(tmp_path / "jobs")
    job_id = _submit(job_dir, "--time", "00:05:00", "--sbatch-arg=--no-requeue")
    _round_completed(job_dir)
    lost_nodes.append(_lose_a_client_node(job_id))
    assert wait_done(SlurmCommands(), job_id, 180) == "NODE_FAIL"
    status = _cli_status(job_dir)
    cause = f"Slurm lost a node of job {job_id} (NODE_FAIL)"
    assert status["state"] == "failed" and status["message"].startswith(cause), status
    assert status["exit_code"] == 32  # NODE_LOST
    errors = _errors(job_dir)
    assert errors[0].startswith(f"the job failed: {cause}"), errors
    assert len(errors) == 1, errors  # the sites Slurm stopped, Slurm's own lines: consequences, not causes


def test_scancel_ends_the_job_as_cancelled_everywhere(slurm, make_recipe, tmp_path):
    run = make_recipe(SLOW, n_clients=2, num_rounds=40, train_args="1").execute(
        SlurmEnv(nodes=2, time="00:05:00", job_root=tmp_path / "jobs", clients_per_rank=1)
    )
    _round_completed(run.job_dir)
    subprocess.run(["scancel", run.slurm_job_id], check=True)
    with pytest.raises(JobFailedError) as failed:
        run.get_result(timeout=180)
    cause = f"Slurm job {run.slurm_job_id} was cancelled (scancel or hpcflare job abort)"
    status = run.job_dir.read_status()
    assert status["state"] == "aborted" and status["message"].startswith(cause), status
    assert cause in str(failed.value)
    assert _errors(run.job_dir) == [f"the job aborted: {cause}"]
    assert wait_done(SlurmCommands(), run.slurm_job_id, 60) == "CANCELLED"


def test_the_last_time_limit_fails_the_job_as_time_limit(slurm, make_recipe, tmp_path):
    """No requeue left (settings.max_requeues 0): Slurm stops the job at its one-minute limit."""
    job_dir = make_recipe(
        SLOW, n_clients=2, num_rounds=500, train_args="1", settings={"max_requeues": 0}
    ).export(tmp_path / "jobs")
    job_id = _submit(job_dir, "--time", "00:01:00")
    assert wait_done(SlurmCommands(), job_id, 300) == "TIMEOUT"
    status = _cli_status(job_dir)
    assert status["state"] == "failed" and status["exit_code"] == 31, status  # TIME_LIMIT
    assert re.match(rf"Slurm job {job_id} reached its time limit", status["message"]), status
    errors = _errors(job_dir)
    assert errors == [f"the job failed: {status['message']}"], errors
    out = next(job_dir.log_dir.glob("slurm-*.out")).read_text()
    assert "settings.max_requeues=0): not again" in out


HOG = """
import time
import hpcflare.client as flare
flare.init()
hog = []
while flare.is_running():
    model = flare.receive()
    if flare.get_site_name() == "site-2" and model.current_round >= 1:
        for _ in range(60):  # 1.5 GB, a step at a time: Slurm samples the step's memory every second
            hog.append(bytearray(25_000_000))
            time.sleep(0.1)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def test_a_site_over_the_jobs_memory_is_named_with_its_node_and_numbers(slurm, make_recipe, tmp_path):
    """The dev cluster enforces --mem as clusters do (memory is a scheduled resource; a step over it is
    killed). Slurm kills the whole step, server included: the batch script names the rank, its site, its
    node and the numbers as the job's first cause (OUT_OF_MEMORY)."""
    job_dir = make_recipe(HOG, n_clients=2, num_rounds=6).export(tmp_path / "jobs")
    job_id = _submit(
        job_dir,
        "--time",
        "00:05:00",
        "--mem",
        "700M",
        "--sbatch-arg=--acctg-freq=1",
        "--sbatch-arg=--no-requeue",
    )
    assert wait_done(SlurmCommands(), job_id, 240) == "FAILED"
    status = _cli_status(job_dir)
    assert status["state"] == "failed" and status["exit_code"] == 33, status  # OUT_OF_MEMORY
    assert re.match(
        r"Slurm killed the job step for memory \(OUT_OF_MEMORY\): task \d+ \(site-2\) on node\d went over the "
        r"job's memory limit \(\d+ MB > 734 MB\)",
        status["message"],
    ), status
    errors = _errors(job_dir)
    assert status["message"] in errors[0], errors
