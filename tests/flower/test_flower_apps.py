"""Unmodified Flower apps on hpcflare's launcher: the same result as Flower's own simulation, in LocalEnv, SimEnv
(through the CLI) and on the real Slurm cluster across two nodes over TLS; a failing ClientApp named by site and
file:line; a SuperNode that dies fails the job naming its site."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcflare.errors import JobFailedError
from tests.conftest import FAST, events, wait_until

if (
    importlib.util.find_spec("flwr") is None
):  # found, never imported: importing flwr sets GRPC_VERBOSITY=error
    pytest.skip("Flower apps need flwr: pip install 'hpcflare[flower]'", allow_module_level=True)
APP = Path(__file__).resolve().parent / "numpy_app"
BIN = Path(sys.executable).parent


def final_weights(text: str) -> np.ndarray:
    (line,) = [line for line in text.splitlines() if line.startswith("FINAL ")]
    return np.array(json.loads(line[len("FINAL ") :]))


def expected(n_sites: int, rounds: int, seed: int = 7) -> np.ndarray:
    """The app's FedAvg by hand: each round adds the num-examples-weighted mean of the sites' seeded steps."""
    steps = [np.random.default_rng([seed, pid]).normal(size=4) for pid in range(n_sites)]
    weights = np.arange(1, n_sites + 1)
    return rounds * sum(w * s for w, s in zip(weights, steps)) / weights.sum()


def flower_simulation(tmp_path: Path, n_sites: int, rounds: int) -> np.ndarray:
    """The same app under Flower's own simulation engine (flwr run with a local SuperLink)."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\noptions.num-supernodes = {n_sites}\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            str(APP),
            "local",
            "--stream",
            "--run-config",
            f"num-server-rounds={rounds}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    # flwr leaves its local SuperLink running (a fixed port, 39091): end it, or the next run would talk to it;
    # its command line names the home's log file and database
    subprocess.run(["pkill", "-f", str(home)], check=False)
    assert "FINAL" in out.stdout, (out.stdout + out.stderr)[-3000:]
    return final_weights(out.stdout)


def joined(job_dir: Path) -> set[str]:
    return {e["site"] for e in events(job_dir, "server") if e["event"] == "client_registered"}


def test_local_run_gives_flowers_own_simulation_result(tmp_path):
    from hpcflare.env import LocalEnv
    from hpcflare.recipe import FlowerRecipe

    run = FlowerRecipe(APP, n_clients=2, num_rounds=3, settings=FAST).execute(
        LocalEnv(job_root=tmp_path / "jobs", verbose=False)
    )
    output = run.get_result(timeout=600)
    ours = final_weights(output.read_text())
    np.testing.assert_allclose(ours, expected(2, 3), rtol=1e-12)
    if importlib.util.find_spec("ray") is None:  # Flower's simulation engine (flwr[simulation])
        pytest.skip("Flower's simulation engine needs ray: pip install 'flwr[simulation]'")
    np.testing.assert_allclose(ours, flower_simulation(tmp_path, 2, 3), rtol=1e-12)
    assert run.get_status()["state"] == "completed" and run.get_status()["round"] == 3
    server = events(run.job_dir.root, "server")
    assert [e["round"] for e in server if e["event"] == "round_completed"] == [1, 2, 3]  # progress and status
    assert sorted(e["site"] for e in server if e["event"] == "client_registered") == ["site-1", "site-2"]
    registered = [e["site"] for e in events(run.job_dir.root, "site-1") if e["event"] == "registered"]
    assert (
        registered == ["site-1"] and (run.job_dir.log_dir / "site-2.out").read_text().count("SuperNode") > 0
    )


def test_cli_runs_the_app_in_sim_env_with_the_rounds_and_sites_asked(tmp_path):
    out = subprocess.run(
        [
            str(BIN / "hpcflare"),
            "flower",
            "run",
            str(APP),
            "--env",
            "sim",
            "--n-clients",
            "3",
            "--rounds",
            "2",
        ]
        + ["--run-config", "min-nodes=3", "--job-root", str(tmp_path / "jobs")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    path = Path(out.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    np.testing.assert_allclose(final_weights(path.read_text()), expected(3, 2), rtol=1e-12)


def test_a_failing_clientapp_is_named_with_its_site_and_file_line(tmp_path):
    from hpcflare.env import LocalEnv
    from hpcflare.recipe import FlowerRecipe

    run = FlowerRecipe(APP, n_clients=2, num_rounds=1, run_config={"fail-partition": 1}).execute(
        LocalEnv(job_root=tmp_path / "jobs", verbose=False)
    )
    run.get_result(timeout=600)  # Flower's FedAvg goes on with the node that answered
    server = [e for e in events(run.job_dir.root, "server") if e["event"] == "client_failed"]
    assert server and server[0]["site"] == "site-2" and "partition 1 has no data" in server[0]["msg"]
    site = [
        e
        for e in events(run.job_dir.root, "client-rank-2") + events(run.job_dir.root, "site-2")
        if e["event"] == "flower_error"
    ]
    assert site and "site-2: ValueError: partition 1 has no data (at client_app.py:" in site[0]["msg"]


def test_a_supernode_that_dies_fails_the_job_naming_its_site(tmp_path):
    from hpcflare.env import LocalEnv
    from hpcflare.recipe import FlowerRecipe

    run = FlowerRecipe(APP, n_clients=2, num_rounds=20, run_config={"sleep": 1.0}, settings=FAST).execute(
        LocalEnv(job_root=tmp_path / "jobs", verbose=False)
    )
    pid_file = run.job_dir.root / "flower" / "pids" / "site-2"
    wait_until(pid_file.exists, "site-2's SuperNode", timeout=120)
    wait_until(
        lambda: joined(run.job_dir.root) == {"site-1", "site-2"}, "both SuperNodes joining", timeout=180
    )
    time.sleep(2)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(
        JobFailedError, match=r"site-2's Flower SuperNode died: killed by signal 9 \(SIGKILL\)"
    ):
        run.get_result(timeout=300)
    from hpcflare.logs.diagnose import diagnose

    findings, summary = diagnose(run.job_dir)
    first = [f for f in findings if f.severity == "error"][0]
    assert "site-2's Flower SuperNode died" in first.what and summary["registered"] == 2


@pytest.mark.slurm
def test_the_app_runs_on_the_slurm_cluster_across_two_nodes_over_tls(slurm, tmp_path):
    from hpcflare.env import SlurmEnv
    from hpcflare.recipe import FlowerRecipe

    run = FlowerRecipe(APP, n_clients=2, num_rounds=2).execute(
        SlurmEnv(nodes=2, time="00:10:00", job_root=tmp_path / "jobs", clients_per_rank=1)
    )
    output = run.get_result(timeout=600)
    np.testing.assert_allclose(final_weights(output.read_text()), expected(2, 2), rtol=1e-12)
    (started,) = [e for e in events(run.job_dir.root, "server") if e["event"] == "server_started"]
    sites = [
        e
        for rank in ("site-1", "site-2")
        for e in events(run.job_dir.root, rank)
        if e["event"] == "registered"
    ]
    assert started["flower"] is True and len(sites) == 2
    assert "(TLS)" in started["msg"]  # a Slurm job's default: the SuperLink's certificate from the job's CA
    assert "Uvicorn running on https://" in (run.job_dir.log_dir / "superlink.out").read_text()
    assert (
        len({started["node"], *(e["node"] for e in sites)}) == 2
    )  # the SuperLink and SuperNodes on two nodes


@pytest.mark.slurm
def test_the_sbatch_route_runs_an_exported_flower_job(slurm, tmp_path):
    from hpcflare.cli import main
    from hpcflare.job import JobDir

    root = tmp_path / "jobs"
    exported = subprocess.run(
        [
            str(BIN / "hpcflare"),
            "flower",
            "run",
            str(APP),
            "--export-only",
            "--rounds",
            "2",
            "--job-root",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    job = JobDir(exported.stdout.strip())
    assert main(["job", "submit", str(job.root), "--nodes", "2", "--time", "00:05:00"]) == 0
    wait_until(
        lambda: job.read_status().get("state") in ("completed", "failed"), "the job's end", timeout=300
    )
    assert job.read_status()["state"] == "completed", job.read_status()
    np.testing.assert_allclose(
        final_weights((job.models_dir / "flower_output.txt").read_text()), expected(2, 2), rtol=1e-12
    )


def test_a_flower_app_runs_across_institutions_through_prod_env(federation, tmp_path):
    """A standing server and two site agents, each in its own directory tree: the Flower app is submitted with
    ProdEnv, the SuperLink runs as the job's server rank, each agent starts its site's SuperNode."""
    from hpcflare.env import ProdEnv
    from hpcflare.recipe import FlowerRecipe

    federation.up(["site-1", "site-2"])
    recipe = FlowerRecipe(
        APP, clients=["site-1", "site-2"], n_clients=2, num_rounds=2, settings_profile="dev"
    )
    run = recipe.execute(ProdEnv(federation.kits / "alice", federation.address, job_root=tmp_path / "jobs"))
    output = run.get_result(timeout=600)
    np.testing.assert_allclose(final_weights(Path(output).read_text()), expected(2, 2), rtol=1e-12)
