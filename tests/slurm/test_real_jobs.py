"""Real sbatch jobs on the local Slurm cluster: ranks across nodes, both rendezvous paths, requeue + resume."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from hpcflare.logs.diagnose import diagnose
from hpcflare.slurm import SlurmCommands
from hpcflare.slurm.sbatch import SbatchSpec, write_sbatch
from tests.conftest import HELLO_MODEL, REPO, SLOW, events, load_result

pytestmark = pytest.mark.slurm
HELLO = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "UNKNOWN"}


def wait_done(commands: SlurmCommands, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = commands.state(job_id)
        if state in FINAL:
            return state
        time.sleep(1)
    raise AssertionError(f"slurm job {job_id} not finished after {timeout}s (state {state})")


@pytest.mark.parametrize("rendezvous", ["fs", "mpi"])
def test_sbatch_job_runs_ranks_across_nodes(slurm, make_recipe, tmp_path, rendezvous):
    staging = rendezvous == "fs"  # the fs variant also broadcasts through shared-filesystem staging
    job_dir = make_recipe(HELLO, n_clients=3, min_clients=3, num_rounds=2, staging=staging).export(
        tmp_path / "jobs"
    )
    commands = SlurmCommands()
    job_id = commands.submit(
        write_sbatch(SbatchSpec(job_dir, nodes=2, time="00:05:00", rendezvous=rendezvous))
    )
    wait_done(commands, job_id, 180)
    assert job_dir.read_status()["state"] == "completed"
    np.testing.assert_array_equal(load_result(job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 2)
    server = events(job_dir.root, "server")
    nodes = {e["node"] for e in server if e["event"] in ("client_registered", "server_started")}
    assert len(nodes) == 2, nodes  # ranks really ran on two (emulated) nodes
    started = [e for e in server if e["event"] == "server_started"]
    assert started[0]["tls"] is True  # mutual TLS by default on Slurm (per-job CA made by the batch step)
    assert (job_dir.root / "kits" / "site-3" / "key.pem").stat().st_mode & 0o077 == 0
    out = next(job_dir.log_dir.glob("slurm-*.out")).read_text()
    assert out.count("from MPI broadcast") == (3 if rendezvous == "mpi" else 0)
    assert "srun exited 0" in out
    assert re.search(r"^\s*0: ", out, re.M)  # srun --label: each line names the rank that wrote it
    server_node = started[0]["node"]
    node_of = {e["site"]: e["node"] for e in server if e["event"] == "client_registered"}
    for site in (
        "site-1",
        "site-2",
        "site-3",
    ):  # beside the server its model is mapped, across nodes streamed
        via = {e["via"] for e in events(job_dir.root, site) if e["event"] == "model_received"}
        assert via == {"staging" if staging else "shared memory" if node_of[site] == server_node else "grpc"}
    if not staging:
        assert {node_of[s] == server_node for s in node_of} == {True, False}  # both ways were taken


def test_requeue_resumes_from_last_completed_round(slurm, make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=2, min_clients=2, num_rounds=4).export(tmp_path / "jobs")
    commands = SlurmCommands()
    job_id = commands.submit(write_sbatch(SbatchSpec(job_dir, nodes=2, time="00:05:00")))
    checkpoint = job_dir.models_dir / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert time.monotonic() < deadline, "no round completed before the requeue"
        time.sleep(0.2)
    commands.requeue(job_id)
    wait_done(commands, job_id, 240)
    assert job_dir.read_status()["state"] == "completed"
    np.testing.assert_array_equal(load_result(job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 4)
    server = events(job_dir.root, "server")
    resumed = [e for e in server if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] >= 1
    completed = [e["round"] for e in server if e["event"] == "round_completed"]
    assert sorted(set(completed)) == [1, 2, 3, 4]  # every round completed, none lost
    restarts = {e["incarnation"] for e in server if e["event"] == "server_started"}
    assert restarts == {f"slurm-{job_id}-0", f"slurm-{job_id}-1"}
    # diagnose groups the requeued life instead of listing every rank's SIGTERM as an error
    findings, _ = diagnose(job_dir, SlurmCommands())
    assert [f.what for f in findings if f.severity == "error"] == []
    assert any(f.what.startswith("life 1 of the job ended") for f in findings)


def test_server_and_clients_as_separate_allocations_via_cli(slurm, make_recipe, tmp_path, capsys):
    from hpcflare.cli import main

    job_dir = make_recipe(HELLO, n_clients=3, min_clients=3, num_rounds=2).export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--separate", "--nodes", "2", "--time", "00:05:00"]) == 0
    assert "server as Slurm job" in capsys.readouterr().out
    server_id = (job_dir.root / "slurm_job_id").read_text().strip()
    clients_id = (job_dir.root / "slurm_clients_job_id").read_text().strip()
    assert server_id != clients_id
    commands = SlurmCommands()
    assert wait_done(commands, server_id, 180) == "COMPLETED"
    assert wait_done(commands, clients_id, 60) == "COMPLETED"
    np.testing.assert_array_equal(load_result(job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 2)
    assert main(["job", "status", str(job_dir.root)]) == 0
    assert '"state": "completed"' in capsys.readouterr().out


def test_cli_abort_cancels_a_running_job(slurm, make_recipe, tmp_path, capsys):
    from hpcflare.cli import main

    job_dir = make_recipe(SLOW, n_clients=2, min_clients=2, num_rounds=50).export(tmp_path / "jobs")
    assert main(["job", "submit", str(job_dir.root), "--nodes", "1", "--time", "00:05:00"]) == 0
    job_id = (job_dir.root / "slurm_job_id").read_text().strip()
    assert main(["job", "list"]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["job", "abort", job_id]) == 0
    assert wait_done(SlurmCommands(), job_id, 60) == "CANCELLED"
    capsys.readouterr()
    assert main(["job", "status", str(job_dir.root)]) == 0  # the scancel'd job is no longer called running
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] in ("failed", "aborted") and shown["slurm_state"] == "CANCELLED", shown


def test_separate_allocations_are_linked(slurm, make_recipe, tmp_path, capsys):
    """The clients job waits for the server's to start (--dependency), and a server that fails cancels it."""
    from hpcflare.cli import main

    job_dir = make_recipe(HELLO, n_clients=2, min_clients=2).export(tmp_path / "jobs")
    (job_dir.models_dir / "initial_model.safetensors").unlink()  # the server rank fails at start
    assert main(["job", "submit", str(job_dir.root), "--separate", "--nodes", "1", "--time", "00:05:00"]) == 0
    server_id = (job_dir.root / "slurm_job_id").read_text().strip()
    clients_id = (job_dir.root / "slurm_clients_job_id").read_text().strip()
    script = (job_dir.root / "job-clients.sbatch").read_text()
    assert (
        f"#SBATCH --dependency=after:{server_id}" in script and "#SBATCH --kill-on-invalid-dep=yes" in script
    )
    assert wait_done(SlurmCommands(), server_id, 120) in ("FAILED", "COMPLETED")
    assert wait_done(SlurmCommands(), clients_id, 60) == "CANCELLED"
    assert "cancelling the clients job" in (job_dir.log_dir / f"slurm-{server_id}.out").read_text()


GPU_SCRIPT = """
import os
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()},
                             metrics={"gpu": int(os.environ["CUDA_VISIBLE_DEVICES"]),
                                      "node": int(os.environ["SLURMD_NODENAME"][4:])}))
"""


def test_each_client_rank_gets_its_own_gpu_of_the_node(slurm, make_recipe, tmp_path):
    """The dev cluster's fake GPUs (gres.conf, 2 per node): --gres=gpu:2 shows every task both; hpcflare gives
    each client rank one, spread over the node, and hides them from the server."""
    import csv

    job_dir = make_recipe(GPU_SCRIPT, n_clients=3, min_clients=3, num_rounds=1).export(tmp_path / "jobs")
    commands = SlurmCommands()
    spec = SbatchSpec(job_dir, nodes=2, ntasks_per_node=2, time="00:05:00", options={"gres": "gpu:2"})
    wait_done(commands, commands.submit(write_sbatch(spec)), 180)
    assert job_dir.read_status()["state"] == "completed"
    rows = list(csv.DictReader(open(job_dir.root / "tracking" / "metrics.csv")))
    placed = {r["site"]: {} for r in rows if r["site"].startswith("site-")}
    for r in rows:
        if r["site"] in placed:
            placed[r["site"]][r["key"]] = int(float(r["value"]))
    pairs = [(p["node"], p["gpu"]) for p in placed.values()]
    assert len(placed) == 3 and len(set(pairs)) == 3  # no two clients share a GPU of one node
    assert all(gpu in (0, 1) for _, gpu in pairs)
    out = next(job_dir.log_dir.glob("slurm-*.out")).read_text()
    assert "server aggregates on the CPU: GPUs 0,1 hidden" in out


def test_relays_spread_one_per_node_with_their_clients(slurm, make_recipe, tmp_path):
    job_dir = make_recipe(HELLO, n_clients=6, min_clients=6, num_rounds=1, relays=3).export(tmp_path / "jobs")
    commands = SlurmCommands()
    spec = SbatchSpec(
        job_dir, nodes=3, ntasks_per_node=4, time="00:05:00"
    )  # 12 ranks: 1 + 3 relays + 6 + 2 idle
    wait_done(commands, commands.submit(write_sbatch(spec)), 180)
    assert job_dir.read_status()["state"] == "completed"
    server = events(job_dir.root, "server")
    relay_node = {e["site"]: e["node"] for e in server if e["event"] == "relay_registered"}
    assert len(relay_node) == 3 and len(set(relay_node.values())) == 3  # one relay per node
    clients = [e for e in server if e["event"] == "client_registered"]
    assert len(clients) == 6 and all(e["via"] and e["node"] == relay_node[e["via"]] for e in clients)


def test_server_exclusive_keeps_the_first_node_for_the_server(slurm, make_recipe, tmp_path):
    from hpcflare.cli import main

    job_dir = make_recipe(HELLO, n_clients=4, min_clients=4, num_rounds=1).export(tmp_path / "jobs")
    assert (
        main(["job", "submit", str(job_dir.root), "--nodes", "3", "--time", "00:05:00", "--server-exclusive"])
        == 0
    )
    commands = SlurmCommands()
    wait_done(commands, (job_dir.root / "slurm_job_id").read_text().strip(), 180)
    assert job_dir.read_status()["state"] == "completed"
    server = events(job_dir.root, "server")
    server_node = next(e["node"] for e in server if e["event"] == "server_started")
    client_nodes = {e["site"]: e["node"] for e in server if e["event"] == "client_registered"}
    assert len(client_nodes) == 4 and server_node not in client_nodes.values() and server_node


def test_an_array_submission_of_a_job_script_refuses_to_run(slurm, make_recipe, tmp_path):
    """`sbatch --array` on hpcflare's script (a habit from parameter sweeps): each task exits at once, saying
    why, instead of two copies of one job fighting over its directory."""
    job_dir = make_recipe(HELLO, n_clients=2, min_clients=2, num_rounds=1).export(tmp_path / "jobs")
    commands = SlurmCommands()
    job_id = commands.submit(write_sbatch(SbatchSpec(job_dir, nodes=1, time="00:05:00")), ["--array=0-1"])
    for task in (0, 1):
        wait_done(commands, f"{job_id}_{task}", 120)
    out = "".join(p.read_text() for p in job_dir.log_dir.glob("slurm-*.out"))
    assert out.count("refusing to run as array task") == 2, out
    assert not (job_dir.root / "status.json").exists()  # no rank of the job ever started


def test_a_job_that_completes_without_a_failed_site_ends_completed_in_slurm(slurm, make_recipe, tmp_path):
    """srun's status is the worst task's (site-3 exits 22), but the job completed: Slurm records COMPLETED, exit
    0, and the batch output names the site it lost; users mailed on failure get no false alarm."""
    script = """
import hpcflare.client as flare
flare.init()
if flare.get_site_name() == "site-3":
    raise SystemExit(22)
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""
    job_dir = make_recipe(script, n_clients=3, min_clients=2, num_rounds=1, clients_per_rank=1).export(
        tmp_path / "jobs"
    )
    commands = SlurmCommands()
    job_id = commands.submit(write_sbatch(SbatchSpec(job_dir, nodes=2, time="00:05:00")))
    assert wait_done(commands, job_id, 180) == "COMPLETED"
    assert job_dir.read_status()["state"] == "completed"
    out = next(job_dir.log_dir.glob("slurm-*.out")).read_text()
    assert (
        re.search(r"srun exited [1-9]", out) and "job completed without 1 site(s)" in out and "site-3" in out
    )


def test_a_sigkilled_server_rank_is_recorded_as_the_jobs_end(slurm, make_recipe, tmp_path):
    """Task 0 (the server) SIGKILLed mid-job: it can record nothing, so the batch script does. status.json says
    failed with the server rank's end, not 'running' forever; Slurm records the failure."""
    import json
    import os
    import signal

    job_dir = make_recipe(SLOW, n_clients=2, num_rounds=30, train_args="1").export(tmp_path / "jobs")
    commands = SlurmCommands()
    job_id = commands.submit(write_sbatch(SbatchSpec(job_dir, nodes=2, time="00:05:00")))
    deadline = time.monotonic() + 180
    while not any(e["event"] == "round_completed" for e in events(job_dir.root, "server")):
        assert time.monotonic() < deadline, "no round completed"
        time.sleep(0.5)
    published = json.loads((job_dir.rendezvous_dir / "server.json").read_text())
    os.kill(int(published["pid"]), signal.SIGKILL)  # the emulated nodes run on this machine
    assert wait_done(commands, job_id, 180) == "FAILED"
    status = job_dir.read_status()
    assert status["state"] == "failed" and "server rank ended without recording an end" in status["message"]
    assert "killed by signal 9" in status["message"] or "srun exited" in status["message"], status
    findings, _ = diagnose(job_dir, commands)
    errors = [f.what for f in findings if f.severity == "error"]
    assert any(
        "server logged no final state: the server rank ended without recording" in e for e in errors
    ), errors
