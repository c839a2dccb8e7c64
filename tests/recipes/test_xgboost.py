"""recipes/xgboost and xgboost-vertical as jobs: histogram-based equals centralized training, bagging beats
every single site, vertical matches centralized on the joined table, and the collective runs over mTLS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

xgb = pytest.importorskip("xgboost")
pytest.importorskip("sklearn")

from sklearn.metrics import roc_auc_score  # noqa: E402

from hpcflare.tabular.data import holdout, site_rows, vertical_columns, vertical_population  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PARAMS = {
    "objective": "binary:logistic",
    "tree_method": "hist",
    "max_depth": 6,
    "eta": 0.1,
    "nthread": 1,
    "seed": 0,
}


def run_job(tmp_path: Path, recipe: str, *flags: str) -> Path:
    root = tmp_path / "jobs"
    out = subprocess.run(
        [sys.executable, str(RECIPES / recipe / "job.py"), "--job-root", str(root), *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return max(
        (p for p in root.iterdir() if p.name.startswith(recipe.split("-")[0])),
        key=lambda p: p.stat().st_mtime,
    )


def booster(job: Path):
    return xgb.Booster(model_file=str(job / "models" / "xgboost_model.json"))


def auc(model, x: np.ndarray, y: np.ndarray) -> float:
    return roc_auc_score(y, model.predict(xgb.DMatrix(x)))


def test_histogram_xgboost_equals_centralized_on_the_union_of_8_non_iid_sites(tmp_path):
    job = run_job(
        tmp_path,
        "xgboost",
        "--env",
        "sim",
        "--n-clients",
        "8",
        "--mode",
        "histogram",
        "--boost-rounds",
        "30",
        "--rows",
        "24000",
    )
    sites = [site_rows(i, 8, 24000) for i in range(8)]
    assert len({len(y) for _, y in sites}) == 8  # non-IID sizes
    x = np.concatenate([s[0] for s in sites])
    y = np.concatenate([s[1] for s in sites])
    x_test, y_test = holdout()
    central = xgb.train(PARAMS, xgb.DMatrix(x, label=y), 30)
    federated = booster(job)
    assert (
        len(
            json.loads((job / "models" / "xgboost_model.json").read_text())["learner"]["gradient_booster"][
                "model"
            ]["trees"]
        )
        == 30
    )
    assert abs(auc(federated, x_test, y_test) - auc(central, x_test, y_test)) < 0.005


def test_bagging_forest_beats_every_single_site(tmp_path):
    job = run_job(
        tmp_path,
        "xgboost",
        "--env",
        "sim",
        "--n-clients",
        "4",
        "--mode",
        "bagging",
        "--rounds",
        "10",
        "--rows",
        "16000",
        "--eta",
        "0.3",
    )
    x_test, y_test = holdout()
    federated = auc(booster(job), x_test, y_test)
    params = {**PARAMS, "eta": 0.3}
    singles = [
        auc(xgb.train(params, xgb.DMatrix(x, label=y), 10), x_test, y_test)
        for x, y in (site_rows(i, 4, 16000) for i in range(4))
    ]
    assert federated >= max(singles), (federated, singles)


def test_vertical_xgboost_after_psi_matches_centralized_on_the_joined_table(tmp_path):
    job = run_job(
        tmp_path,
        "xgboost-vertical",
        "--env",
        "sim",
        "--n-clients",
        "3",
        "--boost-rounds",
        "20",
        "--rows",
        "8000",
    )
    psi = json.loads(next((tmp_path / "jobs").glob("psi-*/models/psi.json")).read_text())
    ids, x, y = vertical_population(8000)
    common = (
        sorted((tmp_path / "jobs").glob("psi-*/sites/site-2/psi_intersection.txt"))[0].read_text().split()
    )
    assert psi["intersection_size"] == len(common) and 0 < len(common) < 8000
    rows = np.array([int(i.split("-")[1]) for i in common])
    cols = np.concatenate([vertical_columns(i, 3, x.shape[1]) for i in range(3)])  # rank order = site order
    central = xgb.train(PARAMS, xgb.DMatrix(x[np.ix_(rows, cols)], label=y[rows]), 20)
    x_test, y_test = holdout()
    federated = booster(job)
    assert federated.num_features() == x.shape[1]
    assert abs(auc(federated, x_test[:, cols], y_test) - auc(central, x_test[:, cols], y_test)) < 0.01


@pytest.mark.parametrize("env", ["local", "mpi"])
def test_histogram_collective_runs_over_mutual_tls_between_processes(tmp_path, env):
    job = run_job(
        tmp_path,
        "xgboost",
        "--env",
        env,
        "--n-clients",
        "2",
        "--boost-rounds",
        "5",
        "--tls",
        "on",
        "--rows",
        "4000",
    )
    events = [json.loads(line) for line in (job / "logs" / "server.jsonl").read_text().splitlines()]
    (tracker,) = [e for e in events if e["event"] == "xgboost_tracker"]
    assert tracker["tls"] is True
    assert (job / "xgboost-tracker" / "tracker-key.pem").stat().st_mode & 0o077 == 0
    assert booster(job).num_boosted_rounds() == 5


def test_histogram_job_stops_with_the_cause_when_sites_have_different_columns(tmp_path):
    rng = np.random.default_rng(0)
    for site, features in (("site-1", 5), ("site-2", 6)):
        x = rng.normal(size=(300, features))
        y = (x[:, 0] > 0).astype(int)
        header = ",".join([f"f{i}" for i in range(features)] + ["label"])
        np.savetxt(
            tmp_path / f"{site}.csv", np.column_stack([x, y]), delimiter=",", header=header, comments=""
        )
    root = tmp_path / "jobs"
    out = subprocess.run(
        [
            sys.executable,
            str(RECIPES / "xgboost" / "job.py"),
            "--job-root",
            str(root),
            "--env",
            "local",
            "--n-clients",
            "2",
            "--mode",
            "histogram",
            "--boost-rounds",
            "5",
            "--data-path",
            str(tmp_path / "{site}.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    (job,) = root.iterdir()
    logs = "".join(p.read_text() for p in (job / "logs").glob("site-*.log"))
    assert "feature counts differ across sites (5 to 6" in logs, (out.stdout + out.stderr)[-3000:]
    assert json.loads((job / "status.json").read_text())["state"] == "failed"


def test_histogram_collective_over_mutual_tls_with_virtual_sites_that_have_no_kit_of_their_own(tmp_path):
    """Project kits for the server and one client rank only: the rank's two virtual sites join the collective
    with their rank's certificate (same project CA)."""
    from hpcflare.env import LocalEnv
    from hpcflare.recipe import XGBHistogramRecipe
    from hpcflare.security.provision import Participant, Project, provision

    kits = provision(
        Project("fed", [Participant("server", "server"), Participant("client-rank-1", "client")]),
        tmp_path / "ws",
    )
    recipe = XGBHistogramRecipe(
        name="xgb-tls",
        n_clients=2,
        min_clients=2,
        train_script=RECIPES / "xgboost" / "client.py",
        train_args=["--mode", "histogram", "--boost-rounds", "4", "--n-sites", "2", "--rows", "3000"],
        tls="on",
        kits_dir=kits,
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", clients_per_rank=2))
    model = safetensors.numpy.load_file(str(run.get_result(timeout=240)))["model"]
    assert xgb.Booster(model_file=bytearray(model.tobytes())).num_boosted_rounds() == 4
    events = [json.loads(line) for line in (run.job_dir.log_dir / "server.jsonl").read_text().splitlines()]
    assert next(e for e in events if e["event"] == "xgboost_tracker")["tls"] is True
    assert not (kits / "site-1").exists() and (run.job_dir.log_dir / "client-rank-1.jsonl").is_file()


def test_a_site_without_any_kit_is_told_to_provision_one(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hpcflare.client import xgboost as site_xgb
    from hpcflare.errors import ConfigError

    agent = SimpleNamespace(site="site-9", kit=None)
    monkeypatch.setattr(site_xgb.flare, "_ctx", lambda ctx=None: SimpleNamespace(agent=agent))
    monkeypatch.setattr(site_xgb.flare, "get_site_name", lambda: "site-9")
    meta = {
        "xgboost": {
            "mode": "histogram",
            "address": "h:1",
            "world_size": 1,
            "ranks": {"site-9": 0},
            "tracker_ca": "PEM",
        }
    }
    with pytest.raises(ConfigError, match="site-9 has no startup kit.*hpcflare provision"):
        site_xgb.collective_args(SimpleNamespace(meta=meta), tmp_path)


def test_vertical_job_stops_with_the_cause_when_the_label_owner_has_no_labels(tmp_path):
    rng = np.random.default_rng(1)
    for site, cols in (
        ("site-1", ["a", "b"]),
        ("site-2", ["c"]),
    ):  # site-1 (label owner) lacks the label column
        ids = [f"p-{i}" for i in range(200)]
        lines = [",".join(["id", *cols])] + [
            ",".join([i, *map(str, rng.normal(size=len(cols)))]) for i in ids
        ]
        (tmp_path / f"{site}.csv").write_text("\n".join(lines) + "\n")
    root = tmp_path / "jobs"
    out = subprocess.run(
        [
            sys.executable,
            str(RECIPES / "xgboost-vertical" / "job.py"),
            "--job-root",
            str(root),
            "--env",
            "local",
            "--n-clients",
            "2",
            "--boost-rounds",
            "3",
            "--data-path",
            str(tmp_path / "{site}.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    (job,) = root.glob("xgboost-vertical-*")
    logs = (job / "logs" / "site-1.log").read_text()
    assert "has no label column 'label'" in logs and "--label-column" in logs, (out.stdout + out.stderr)[
        -3000:
    ]
    assert json.loads((job / "status.json").read_text())["state"] == "failed" and out.returncode != 0


def test_a_site_killed_mid_boosting_is_the_cause_and_the_survivors_are_not_blamed(tmp_path):
    import os
    import signal
    import time

    from hpcflare.exitcodes import ExitCode
    from hpcflare.job import JobDir
    from hpcflare.logs.diagnose import diagnose
    from tests.conftest import events, wait_until

    root = tmp_path / "jobs"
    flags = ["--job-root", str(root), "--env", "local", "--n-clients", "3", "--mode", "histogram"]
    proc = subprocess.Popen(
        [
            sys.executable,
            str(RECIPES / "xgboost" / "job.py"),
            *flags,
            "--boost-rounds",
            "400",
            "--rows",
            "60000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: root.exists() and any(root.iterdir()), "the job folder", timeout=120)
        job = JobDir(next(root.iterdir()))
        wait_until(
            lambda: any(e["event"] == "task_received" for e in events(job.root, "site-2")),
            "boosting",
            timeout=180,
        )
        time.sleep(2)
        pids = json.loads((job.log_dir / "client_pids.json").read_text())
        os.kill(pids["site-2"], signal.SIGKILL)
        assert proc.wait(timeout=300) != 0
    finally:
        proc.kill()
    status = job.read_status()
    assert status["state"] == "failed" and status["message"].startswith("site-2 dead"), status
    survivors = {
        rank: [e for e in events(job.root, rank) if e["event"] == "client_failed"]
        for rank in ("site-1", "site-3")
    }
    assert all(e and e[0]["exit_code"] == ExitCode.PEER_LOST for e in survivors.values()), survivors
    findings, _ = diagnose(job)
    errors = [f.what for f in findings if f.severity == "error"]
    assert errors[0].startswith("the job failed: site-2 dead") and not any(
        "site-1" in e or "site-3" in e for e in errors
    )
