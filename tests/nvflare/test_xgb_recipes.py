"""NVFlare's XGBoost recipes with their own keywords (per_site_config data loaders, no training script) run
unchanged through ``hpcflare nvflare``: NVFlare's CSVDataLoader and a site's own XGBDataLoader subclass are
rebuilt at each site; the results are checked against XGBoost trained centrally on the union of the rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcflare.tabular import xgb_model
from tests.conftest import load_result
from tests.nvflare.test_job_py import nvflare, workspace_of

xgb = pytest.importorskip("xgboost")
metrics = pytest.importorskip("sklearn.metrics")
SITES = ("site-1", "site-2", "site-3")


def _table(tmp_path, rows: int = 600, features: int = 6):
    """Three sites' rows of one binary task (label in column 0, no header), and a held-out test table."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows * 4, features))
    y = (x[:, 0] + 0.8 * x[:, 1] * x[:, 2] - 0.5 * x[:, 3] + rng.normal(scale=0.3, size=len(x)) > 0).astype(
        float
    )
    table = np.column_stack([y, x])
    data = tmp_path / "data"
    for i, site in enumerate(SITES):
        part = table[i * rows : (i + 1) * rows]
        (data / site).mkdir(parents=True)
        np.savetxt(data / site / "train.csv", part[: rows * 3 // 4], delimiter=",", fmt="%.6f")
        np.savetxt(data / site / "valid.csv", part[rows * 3 // 4 :], delimiter=",", fmt="%.6f")
    return data, table[: rows * 3], table[rows * 3 :]


def _booster(workspace):
    """The job's result: the booster's JSON in a safetensors file."""
    tensor = load_result(workspace / "models" / "global_model.safetensors")[xgb_model.MODEL_KEY]
    return xgb.Booster(model_file=bytearray(xgb_model.from_tensor(tensor)))


def _auc(booster, test) -> float:
    return float(metrics.roc_auc_score(test[:, 0], booster.predict(xgb.DMatrix(test[:, 1:]))))


def test_xgb_horizontal_recipe_with_csv_data_loaders_matches_central_training(tmp_path):
    data, union, test = _table(tmp_path)
    done = nvflare(tmp_path, "job_xgb.py", "horizontal", str(data), str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr[-3000:]
    workspace = workspace_of(done.stdout)
    assert "Job Status is: completed" in done.stdout
    fed = _auc(_booster(workspace), test)
    train = np.concatenate(
        [np.loadtxt(data / site / "train.csv", delimiter=",") for site in SITES]
    )  # central XGBoost on the same rows and settings
    params = {"max_depth": 3, "eta": 0.3, "objective": "binary:logistic", "eval_metric": "auc", "nthread": 1}
    central = _auc(xgb.train(params, xgb.DMatrix(train[:, 1:], label=train[:, 0]), 15), test)
    assert fed > 0.8 and abs(fed - central) < 0.005, (fed, central)
    status = json.loads((workspace / "status.json").read_text())
    assert status["state"] == "completed"


def test_xgb_vertical_recipe_matches_central_training_on_the_joined_columns(tmp_path):
    _, union, test = _table(tmp_path)
    data = tmp_path / "vertical"
    train, valid = union[:1200], union[1200:1500]
    for site, columns in (("site-1", [0, 1, 2, 3]), ("site-2", [4, 5, 6])):  # column 0: the label
        (data / site).mkdir(parents=True)
        np.savetxt(data / site / "train.csv", train[:, columns], delimiter=",", fmt="%.6f")
        np.savetxt(data / site / "valid.csv", valid[:, columns], delimiter=",", fmt="%.6f")
    done = nvflare(tmp_path, "job_xgb.py", "vertical", str(data), str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr[-3000:]
    fed = _auc(_booster(workspace_of(done.stdout)), test)
    params = {"max_depth": 3, "eta": 0.3, "objective": "binary:logistic", "eval_metric": "auc", "nthread": 1}
    central = _auc(xgb.train(params, xgb.DMatrix(train[:, 1:], label=train[:, 0]), 15), test)
    assert fed > 0.8 and abs(fed - central) < 0.005, (fed, central)


def test_xgb_bagging_recipe_with_a_sites_own_loader_class(tmp_path):
    data, union, test = _table(tmp_path)
    done = nvflare(tmp_path, "job_xgb.py", "bagging", str(data), str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr[-3000:]
    workspace = workspace_of(done.stdout)
    assert (workspace / "app" / "npy_loader.py").is_file()  # the loader's class travelled with the job
    booster = _booster(workspace)
    model = json.loads(booster.save_raw("json"))
    trees = int(model["learner"]["gradient_booster"]["model"]["gbtree_model_param"]["num_trees"])
    assert trees == 4 * 3 * 3  # rounds x sites x parallel trees
    assert _auc(booster, test) > 0.75
    assert "XGBBaggingRecipe(" not in done.stderr  # its defaults: nothing to note


def test_xgb_recipe_refuses_what_it_cannot_do_in_one_line(tmp_path):
    (tmp_path / "job.py").write_text(
        "from nvflare.app_opt.xgboost.recipes import XGBHorizontalRecipe\n"
        "from nvflare.app_opt.xgboost.histogram_based_v2.csv_data_loader import CSVDataLoader\n"
        "XGBHorizontalRecipe(name='x', min_clients=2, num_rounds=3, secure=True,\n"
        "    per_site_config={'site-1': {'data_loader': CSVDataLoader(folder='/d')}})\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "hpcflare.nvflare", "job.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 10 and "Traceback" not in done.stderr, done.stderr  # CONFIG_ERROR
    assert "secure=True" in done.stderr and "Leave secure=False" in done.stderr
