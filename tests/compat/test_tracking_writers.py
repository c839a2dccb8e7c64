"""NVFlare's tracking writers: every record reaches the server with site, round and step, in every receiver."""

from __future__ import annotations

import pytest

from tests.compat.conftest import step_rows

STEPS = 1200


@pytest.mark.parametrize("variant", ["nvflare", "hpcflare"])
@pytest.mark.parametrize("env_kind", ["local", "sim"])
def test_every_record_lands_in_csv_and_tensorboard(job, env_kind, variant):
    pytest.importorskip("tensorboard")
    run = job("tracking_writers.py", env_kind, variant, num_rounds=2, tracking=["csv", "tensorboard"])
    rows = step_rows(run)
    loss = [r for r in rows if r["key"] == "train_loss"]
    assert len(loss) == 2 * 2 * STEPS  # two sites, two rounds, nothing summarised away
    site1 = sorted((int(r["step"]), float(r["value"]), r["round"]) for r in loss if r["site"] == "site-1")
    assert site1[0] == (0, 0.0, "1") and site1[-1] == (2 * STEPS - 1, 1 + (STEPS - 1) / STEPS, "2")
    pairs = {
        (r["site"], r["key"], r["step"]): float(r["value"]) for r in rows if r["key"].startswith("pair/")
    }
    assert pairs[("site-2", "pair/b", "1")] == 2.0
    texts = [r for r in rows if r["data_type"] == "TEXT" and r["site"] == "site-1"]
    assert [t["path"] for t in texts] == ["notes/round-0.txt", "notes/round-1.txt"]
    params = [r for r in rows if r["data_type"] == "PARAMETER"]
    assert {(r["site"], r["key"], r["value"]) for r in params} == {
        ("site-1", "lr", "0.01"),
        ("site-2", "lr", "0.01"),
    }

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(run.job_dir.root / "tracking" / "tensorboard" / "site-2"), size_guidance={"scalars": 0}
    )
    acc.Reload()
    assert len(acc.Scalars("train_loss")) == 2 * STEPS
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == [(0, 10.0), (1, 9.0)]


def test_mlflow_and_wandb_receivers(job):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    from hpcflare.recipe import FedAvgRecipe, add_experiment_tracking

    original = FedAvgRecipe.execute

    def tracked(self, env):
        add_experiment_tracking(self, "mlflow", {"experiment_name": "compat-exp"})
        add_experiment_tracking(self, "wandb")
        return original(self, env)

    FedAvgRecipe.execute = tracked
    try:
        run = job("tracking_writers.py", "local", "nvflare", num_rounds=2, timeout=180)
    finally:
        FedAvgRecipe.execute = original
    root = run.job_dir.root / "tracking"
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compat-exp")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"site-1", "site-2"}  # no FLModel.metrics here, so no round means ("global")
    site1 = runs["site-1"]
    assert site1.data.params["lr"] == "0.01" and site1.data.tags["team"] == "a"
    assert len(client.get_metric_history(site1.info.run_id, "train_loss")) == 2 * STEPS
    assert [(m.step, m.value) for m in client.get_metric_history(site1.info.run_id, "val_loss")] == [
        (0, 10.0),
        (1, 9.0),
    ]
    artifacts = [a.path for a in client.list_artifacts(site1.info.run_id, "notes")]
    assert artifacts == ["notes/round-0.txt", "notes/round-1.txt"]

    runs_files = sorted((root / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs_files) == 2  # one offline run per site, for `wandb sync` later
    for path in runs_files:  # the run log (protobuf records) holds what the writers logged
        data = path.read_bytes()
        assert b"acc" in data and b"train_loss" in data and b"val_loss" in data


def test_record_limit_per_round_drops_with_one_warning(job):
    run = job(
        "tracking_writers.py",
        "local",
        "hpcflare",
        num_rounds=1,
        settings={"tracking_max_records_per_round": 100},
    )
    from tests.conftest import events

    assert len([r for r in step_rows(run) if r["site"] == "site-1" and r["round"] == "1"]) == 100
    warned = [e for e in events(run.job_dir.root, "site-1") if e["event"] == "tracking_dropped"]
    assert len(warned) == 1 and "tracking_max_records_per_round=100" in warned[0]["msg"]


def test_records_travel_through_a_relay(job):
    run = job("tracking_writers.py", "local", "hpcflare", num_rounds=2, relays=1, n_clients=3)
    loss = [r for r in step_rows(run) if r["key"] == "train_loss"]
    assert len(loss) == 3 * 2 * STEPS and {r["site"] for r in loss} == {"site-1", "site-2", "site-3"}
