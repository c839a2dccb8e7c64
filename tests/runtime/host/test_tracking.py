"""Tracking, best-model selection and early stopping in a real job; initial checkpoints."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from hpcflare.errors import ConfigError
from tests.conftest import HELLO_MODEL, events, load_result

SCRIPT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    m = flare.receive()
    received = float(m.params["numpy_key"].mean())
    flare.log("received_mean", received)
    flare.send(flare.FLModel(params={"numpy_key": m.params["numpy_key"] + 1},
                             metrics={"score": -abs(received - 6.0), "site_no": int(flare.get_site_name()[-1])}))
"""


def test_metrics_tracked_best_model_kept_and_early_stop(make_recipe, local_env):
    pytest.importorskip("tensorboard")
    run = make_recipe(
        SCRIPT,
        n_clients=2,
        num_rounds=10,
        tracking=["csv", "tensorboard"],
        key_metric="score",
        early_stop_patience=2,
    ).execute(local_env)
    result = load_result(run.get_result(timeout=90))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 4)  # stopped after round 4 of 10
    models = run.job_dir.models_dir
    np.testing.assert_array_equal(
        load_result(models / "best_model.safetensors")["numpy_key"], HELLO_MODEL + 1
    )
    best = json.loads((models / "best_model.json").read_text())
    assert best["round"] == 2 and best["value"] == 0.0 and best["scores_model_of_round"] == 1
    assert any(e["event"] == "early_stopped" and e["round"] == 4 for e in events(run.job_dir.root, "server"))
    assert run.get_status()["state"] == "completed"

    rows = list(csv.DictReader(open(run.job_dir.root / "tracking" / "metrics.csv")))
    by = {(r["round"], r["site"], r["key"]): float(r["value"]) for r in rows}
    assert by[("3", "site-1", "score")] == -1.0 and by[("2", "site-2", "site_no")] == 2.0
    assert (
        "3",
        "site-2",
        "received_mean",
    ) not in by  # flare.log() records are step records, not round metrics
    assert by[("2", "global", "site_no")] == 1.5  # mean over the sites
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")  # ISO 8601, UTC
    assert all(iso.match(r["time"]) for r in rows), rows[0]
    assert iso.match(run.job_dir.read_status()["updated"])
    steps = list(csv.DictReader(open(run.job_dir.root / "tracking" / "steps.csv")))
    logged = {(r["site"], r["round"]): float(r["value"]) for r in steps if r["key"] == "received_mean"}
    assert logged[("site-2", "3")] == 7.0 and len(logged) == 8  # every site's record of every round

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.job_dir.root / "tracking" / "tensorboard" / "site-1"))
    acc.Reload()
    # round metrics have their own tag; the script's flare.log() steps keep theirs
    assert [(e.step, e.value) for e in acc.Scalars("round/score")] == [
        (1, -1.0),
        (2, 0.0),
        (3, -1.0),
        (4, -2.0),
    ]
    assert "score" not in acc.Tags()["scalars"] and len(acc.Scalars("received_mean")) == 4


def test_options_are_checked(make_recipe):
    with pytest.raises(ConfigError, match="unknown recipe option"):
        make_recipe(SCRIPT, key_metrc="score")
    with pytest.raises(ConfigError, match="needs a key_metric"):
        make_recipe(SCRIPT, early_stop_patience=2).export("/tmp/hpcflare-never")


def test_initial_checkpoint_replaces_weights(make_recipe, tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.numpy

    net = torch.nn.Linear(3, 2)
    saved = {k: v + 10 for k, v in net.state_dict().items()}
    torch.save(saved, tmp_path / "ckpt.pt")
    job = make_recipe(SCRIPT, model=net, initial_checkpoint=tmp_path / "ckpt.pt").export(tmp_path / "jobs")
    initial = safetensors.numpy.load_file(str(job.models_dir / "initial_model.safetensors"))
    np.testing.assert_allclose(initial["weight"], saved["weight"].numpy())
    torch.save({"weight": torch.zeros(5, 5)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit the model"):
        make_recipe(SCRIPT, model=net, initial_checkpoint=tmp_path / "bad.pt").export(tmp_path / "jobs")


def test_diagnose_reports_early_stop_and_missing_key_metric(make_recipe, local_env, capsys):
    from hpcflare.cli import main

    run = make_recipe(SCRIPT, n_clients=2, num_rounds=2, key_metric="f1").execute(local_env)
    run.get_result(timeout=90)
    capsys.readouterr()
    assert main(["logs", "diagnose", str(run.job_dir.root)]) == 0
    text = capsys.readouterr().out
    assert "no site reported key_metric 'f1'" in text and "change key_metric" in text
