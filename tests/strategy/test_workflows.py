"""Workflows beyond averaging, as real jobs: cyclic transfer, federated evaluation, cross-site evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcflare.errors import ConfigError
from hpcflare.recipe import CrossSiteEvalRecipe, CyclicRecipe, FedEvalRecipe
from tests.conftest import FAST, HELLO_MODEL, events, load_result

# NVFlare's task-kind pattern: train / evaluate / submit_model in one loop
SCRIPT = """
import hpcflare.client as flare
flare.init()
site = int(flare.get_site_name()[-1])
local = None
while flare.is_running():
    m = flare.receive()
    w = m.params["numpy_key"]
    if flare.is_train():
        local = w + site
        flare.send(flare.FLModel(params={"numpy_key": local}, metrics={"who": site}))
    elif flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"mean": float(w.mean()), "owner": m.meta.get("model_owner", "")}))
    elif flare.is_submit_model():
        flare.send(flare.FLModel(params={"numpy_key": local}))
"""


def build(cls, tmp_path, **kwargs):
    path = tmp_path / "client.py"
    path.write_text(SCRIPT)
    kwargs.setdefault("min_clients", 2)
    return cls(name="w", model={"numpy_key": HELLO_MODEL}, train_script=path, settings=dict(FAST), **kwargs)


def test_cyclic_passes_the_model_site_to_site(tmp_path, local_env):
    run = build(CyclicRecipe, tmp_path, n_clients=3, num_rounds=2).execute(local_env)
    np.testing.assert_array_equal(
        load_result(run.get_result(timeout=90))["numpy_key"], HELLO_MODEL + 2 * (1 + 2 + 3)
    )
    started = [e for e in events(run.job_dir.root, "server") if e["event"] == "round_started"]
    assert [e["clients"] for e in started] == [[f"site-{i}"] for i in (1, 2, 3, 1, 2, 3)]


def test_fedeval_evaluates_the_given_model_everywhere(tmp_path, local_env):
    run = build(FedEvalRecipe, tmp_path, n_clients=2).execute(local_env)
    np.testing.assert_array_equal(
        load_result(run.get_result(timeout=90))["numpy_key"], HELLO_MODEL
    )  # unchanged
    results = json.loads((run.job_dir.models_dir / "evaluation.json").read_text())["results"]
    assert results == {"site-1": {"mean": 5.0, "owner": ""}, "site-2": {"mean": 5.0, "owner": ""}}


def test_cross_site_matrix_after_training(tmp_path, local_env):
    run = build(CrossSiteEvalRecipe, tmp_path, n_clients=2, num_rounds=1).execute(local_env)
    result = load_result(run.get_result(timeout=90))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 1.5)
    matrix = json.loads((run.job_dir.root / "cross_site" / "matrix.json").read_text())
    means = {owner: {site: m["mean"] for site, m in row.items()} for owner, row in matrix.items()}
    assert means == {
        "site-1": {"site-1": 6.0, "site-2": 6.0},
        "site-2": {"site-1": 7.0, "site-2": 7.0},
        "global": {"site-1": 6.5, "site-2": 6.5},
    }
    assert {m["owner"] for m in matrix["site-2"].values()} == {"site-2"}
    tasks = [e["task"] for e in events(run.job_dir.root, "server") if e["event"] == "round_started"]
    assert tasks == ["train", "submit_model", "validate", "validate", "validate"]


def test_site_workflows_refuse_relays(tmp_path):
    with pytest.raises(ConfigError, match="without relays"):
        build(CyclicRecipe, tmp_path, n_clients=3, num_rounds=1, relays=1).export(tmp_path / "jobs")
