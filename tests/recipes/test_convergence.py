"""Real learning, not arithmetic: a tiny MLP on 8 sites (real processes, LocalEnv) of a synthetic 10-class task.

Non-IID (Dirichlet label skew): FedAvg, FedProx, SCAFFOLD and FedOpt (server SGD + momentum) each reach the target accuracy on the held-out
test set, and SCAFFOLD's drift correction beats plain FedAvg. IID: FedAvg matches centralized training on
the pooled data within a small margin.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hpcflare.data.synthetic import accuracy, holdout_set, population, tiny_mlp  # noqa: E402
from tests.conftest import FAST, REPO  # noqa: E402

TARGET = 0.75  # centralized training reaches ~0.92; a linear model ~0.62
MARGIN = 0.03


def recipe_module(name: str):
    spec = importlib.util.spec_from_file_location(
        f"recipe_{name.replace('-', '_')}", REPO / "recipes" / name / "job.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(name: str, tmp_path: Path, *argv: str) -> float:
    job = recipe_module(name)
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    args = parser.parse_args(["--job-root", str(tmp_path / name), "--num-rounds", "15", *argv])
    recipe = job.build(args, settings={**FAST, "registration_timeout": 60})
    from hpcflare.env import LocalEnv

    result = recipe.execute(LocalEnv(job_root=args.job_root, verbose=False)).get_result(timeout=300)
    from hpcflare.recipe.model_io import load_into

    return accuracy(load_into(tiny_mlp(), result), *holdout_set())


@pytest.fixture(scope="module")
def noniid(tmp_path_factory) -> dict[str, float]:
    tmp = tmp_path_factory.mktemp("noniid")
    return {name: run_recipe(f"{name}-torch", tmp) for name in ("fedavg", "fedprox", "scaffold", "fedopt")}


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "scaffold", "fedopt"])
def test_non_iid_reaches_target_accuracy(noniid, algorithm):
    assert noniid[algorithm] >= TARGET, noniid


def test_scaffold_corrects_client_drift(noniid):
    assert noniid["scaffold"] >= noniid["fedavg"] + 0.02, noniid


def centralized(epochs: int = 20) -> float:
    x, y = population()
    net = tiny_mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    shuffle = torch.Generator().manual_seed(0)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(Y), generator=shuffle)
        for i in range(0, len(Y), 32):
            batch = order[i : i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(X[batch]), Y[batch]).backward()
            opt.step()
    return accuracy(net, *holdout_set())


def test_iid_fedavg_matches_centralized(tmp_path):
    federated = run_recipe(
        "fedavg-torch", tmp_path, "--split", "iid", "--local-epochs", "5", "--lr", "0.1", "--num-rounds", "20"
    )
    pooled = centralized()
    assert pooled > 0.85
    assert abs(federated - pooled) <= MARGIN, (federated, pooled)
