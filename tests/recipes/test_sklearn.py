"""recipes/sklearn-kmeans and sklearn-linear: federated quality against centralized training on the union of
the sites' rows, and the errors a bad site table gets."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

pytest.importorskip("sklearn")

from hpcflare.tabular.data import cluster_rows, holdout, site_rows  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def run_job(tmp_path: Path, recipe: str, *flags: str, ok: bool = True) -> tuple[Path, str]:
    out = subprocess.run(
        [sys.executable, str(RECIPES / recipe / "job.py"), "--job-root", str(tmp_path / "jobs"), *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.stdout + out.stderr
    if ok:
        assert out.returncode == 0, text[-4000:]
    (job,) = (tmp_path / "jobs").iterdir()
    return job, text


def inertia(x: np.ndarray, centers: np.ndarray) -> float:
    return float(((x[:, None, :] - centers[None]) ** 2).sum(-1).min(1).mean())


def test_federated_kmeans_matches_centralized_quality_on_non_iid_sites(tmp_path):
    from sklearn.cluster import KMeans

    job, _ = run_job(
        tmp_path,
        "sklearn-kmeans",
        "--env",
        "sim",
        "--n-clients",
        "4",
        "--rounds",
        "8",
        "--clusters",
        "6",
        "--features",
        "4",
        "--rows",
        "6000",
    )
    result = safetensors.numpy.load_file(str(job / "models" / "global_model.safetensors"))
    union = np.concatenate([cluster_rows(i, 4, 6000, 6, 4) for i in range(4)])
    assert len(union) == 6000 and result["centers"].shape == (6, 4)
    central = KMeans(n_clusters=6, n_init=10, random_state=0).fit(union)
    assert inertia(union, result["centers"]) <= 1.05 * central.inertia_ / len(union)
    assert result["counts"].sum() == len(union)  # the last round saw every row once


@pytest.mark.parametrize("model", ["logreg", "svm"])
def test_federated_linear_model_matches_centralized_accuracy(tmp_path, model):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    job, _ = run_job(
        tmp_path,
        "sklearn-linear",
        "--env",
        "sim",
        "--n-clients",
        "4",
        "--rounds",
        "8",
        "--model",
        model,
        "--rows",
        "20000",
    )
    result = safetensors.numpy.load_file(str(job / "models" / "global_model.safetensors"))
    x = np.concatenate([site_rows(i, 4, 20000)[0] for i in range(4)])
    y = np.concatenate([site_rows(i, 4, 20000)[1] for i in range(4)])
    x_test, y_test = holdout()
    central = (
        (LogisticRegression(max_iter=1000) if model == "logreg" else LinearSVC())
        .fit(x, y)
        .score(x_test, y_test)
    )
    federated = np.mean(((x_test @ result["coef"].T).ravel() + result["intercept"][0] > 0) == (y_test > 0.5))
    assert federated >= central - 0.01, (federated, central)


def write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows.tolist())


def test_kmeans_site_with_other_feature_count_fails_with_the_fix(tmp_path):
    """site-2's table has an extra column: its script stops with a message naming the site and the fix, and
    the job (which needs both sites) fails saying why."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    write_csv(data / "site-1.csv", ["a", "b", "c"], rng.normal(size=(50, 3)))
    write_csv(data / "site-2.csv", ["a", "b", "c", "d"], rng.normal(size=(50, 4)))
    job, text = run_job(
        tmp_path,
        "sklearn-kmeans",
        "--env",
        "sim",
        "--n-clients",
        "2",
        "--rounds",
        "2",
        "--clusters",
        "2",
        "--features",
        "3",
        "--data-path",
        str(data / "{site}.csv"),
        ok=False,
    )
    logs = "".join(p.read_text() for p in (job / "logs").glob("*.log"))
    assert "site-2 has 4 feature columns but the job's model has 3" in logs + text


def test_linear_site_without_rows_or_label_column_is_refused(tmp_path):
    from hpcflare.tabular.data import TableError, check_table, load_csv

    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "empty.csv", ["a", "label"], np.zeros((0, 2)))
    x, y, _, _ = load_csv(data / "empty.csv", "label", "site-3")
    with pytest.raises(TableError, match="site-3 has no rows"):
        check_table("site-3", x, y)
    write_csv(data / "nolabel.csv", ["a", "b"], np.ones((4, 2)))
    with pytest.raises(TableError, match="no label column 'label'"):
        load_csv(data / "nolabel.csv", "label", "site-1")
    with pytest.raises(TableError, match="must hold them"):
        check_table("site-1", np.ones((4, 2)), None)
    with pytest.raises(TableError, match="labels must be 0/1"):
        check_table("site-1", np.ones((2, 2)), np.array([0.0, 2.0]), binary=True)
