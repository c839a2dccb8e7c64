"""Recipes on the real Slurm dev cluster (mutual TLS on by default): swarm peers across nodes, statistics."""

from __future__ import annotations

import argparse
import json

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
    recipe = FedStatsRecipe(name="stats", min_clients=2, train_script=REPO / "recipes" / "fedstats" / "client.py",
                            features=["age", "bmi"], settings={**FAST, "registration_timeout": 60})
    run = recipe.execute(SlurmEnv(nodes=2, time="00:05:00", job_root=tmp_path / "jobs"))
    run.get_result(timeout=180)
    stats = json.loads((run.job_dir.models_dir / "statistics.json").read_text())["statistics"]
    assert stats["age"]["count"] == 150 + 300 and 18 <= stats["age"]["min"] < stats["age"]["max"] <= 95
