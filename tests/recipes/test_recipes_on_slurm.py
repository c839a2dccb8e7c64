"""Recipes on the real Slurm dev cluster (mutual TLS on by default): swarm peers across nodes, statistics, XGBoost's
federated collective (histogram and vertical after PSI)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from hpcflare.env import SlurmEnv
from hpcflare.recipe import FedStatsRecipe
from tests.conftest import FAST, REPO
from tests.recipes.test_convergence import recipe_module

pytestmark = pytest.mark.slurm


def test_swarm_torch_across_nodes(slurm, tmp_path):
    pytest.importorskip("torch")
    job = recipe_module("swarm-torch")
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    args = parser.parse_args(["--n-clients", "3", "--num-rounds", "3", "--local-epochs", "1"])
    recipe = job.build(args, settings={**FAST, "registration_timeout": 90, "round_timeout": 90})
    run = recipe.execute(SlurmEnv(nodes=2, time="00:05:00", job_root=tmp_path / "jobs"))
    assert run.get_result(timeout=240).is_file()
    server = [json.loads(line) for line in (run.job_dir.log_dir / "server.jsonl").read_text().splitlines()]
    assert [e["aggregator"] for e in server if e["event"] == "swarm_round"] == ["site-1", "site-2", "site-3"]
    assert next(e for e in server if e["event"] == "server_started")["tls"] is True


def test_fedstats_on_slurm(slurm, tmp_path):
    recipe = FedStatsRecipe(
        name="stats",
        min_clients=2,
        train_script=REPO / "recipes" / "fedstats" / "client.py",
        features=["age", "bmi"],
        settings={**FAST, "registration_timeout": 60},
    )
    run = recipe.execute(SlurmEnv(nodes=2, time="00:05:00", job_root=tmp_path / "jobs"))
    run.get_result(timeout=180)
    stats = json.loads((run.job_dir.models_dir / "statistics.json").read_text())["statistics"]
    assert stats["age"]["count"] == 150 + 300 and 18 <= stats["age"]["min"] < stats["age"]["max"] <= 95


def _recipe_cli(recipe: str, tmp_path, *flags: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes" / recipe / "job.py"),
            "--env",
            "slurm",
            "--nodes",
            "2",
            "--time",
            "00:05:00",
            "--job-root",
            str(tmp_path / "jobs"),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


def _xgboost_results(tmp_path, recipe: str) -> tuple[list[dict], object]:
    xgb = pytest.importorskip("xgboost")
    (job,) = (tmp_path / "jobs").glob(f"{recipe}-*")
    server = [json.loads(line) for line in (job / "logs" / "server.jsonl").read_text().splitlines()]
    return server, xgb.Booster(model_file=str(job / "models" / "xgboost_model.json"))


def test_histogram_xgboost_on_slurm_runs_the_collective_over_mutual_tls_across_nodes(slurm, tmp_path):
    pytest.importorskip("xgboost")
    _recipe_cli(
        "xgboost",
        tmp_path,
        "--n-clients",
        "3",
        "--mode",
        "histogram",
        "--boost-rounds",
        "5",
        "--rows",
        "3000",
    )
    server, booster = _xgboost_results(tmp_path, "xgboost-histogram")
    tracker = next(e for e in server if e["event"] == "xgboost_tracker")
    assert tracker["tls"] is True and sorted(tracker["world"]) == ["site-1", "site-2", "site-3"]
    assert booster.num_boosted_rounds() == 5
    nodes = {e["node"] for e in server if e["event"] == "client_registered"}
    assert len(nodes) == 2, nodes  # the collective spans both nodes of the allocation


def test_vertical_xgboost_on_slurm_aligns_rows_with_a_psi_job_first(slurm, tmp_path):
    pytest.importorskip("xgboost")
    out = _recipe_cli(
        "xgboost-vertical", tmp_path, "--n-clients", "3", "--boost-rounds", "5", "--rows", "3000"
    )
    (psi,) = (tmp_path / "jobs").glob("psi-*")
    assert json.loads((psi / "status.json").read_text())["state"] == "completed"
    common = (psi / "sites" / "site-2" / "psi_intersection.txt").read_text().split()
    assert 0 < len(common) < 3000
    server, booster = _xgboost_results(tmp_path, "xgboost-vertical")
    assert (
        next(e for e in server if e["event"] == "xgboost_tracker")["world"][0] == "site-1"
    )  # label owner rank 0
    assert booster.num_boosted_rounds() == 5 and "5 trees" in out
