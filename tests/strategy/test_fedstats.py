"""Federated statistics as a real job: exact pooled statistics without noise, guards for small sites."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcflare.recipe import FedStatsRecipe
from hpcflare.strategy.fedstats import quantile
from tests.conftest import FAST

SCRIPT = """
import numpy as np
import hpcflare.client as flare
from hpcflare.client.stats import local_statistics
flare.init()
i = int(flare.get_site_name()[-1])
rng = np.random.default_rng(i)
data = {"age": rng.normal(40 + 5 * i, 10, size=200 * i), "bmi": rng.normal(25, 3, size=3 if i == 3 else 100)}
while flare.is_running():
    task = flare.receive()
    flare.send(flare.FLModel(params=local_statistics(data, task.meta, seed=i)))
"""


def pooled(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.normal(40 + 5 * i, 10, size=200 * i), rng.normal(25, 3, size=3 if i == 3 else 100)


def run_stats(tmp_path, local_env, noise: float) -> dict:
    path = tmp_path / "client.py"
    path.write_text(SCRIPT)
    recipe = FedStatsRecipe(
        name="stats",
        min_clients=3,
        train_script=path,
        features=["age", "bmi"],
        bins=40,
        min_count=10,
        noise=noise,
        settings=dict(FAST),
    )
    run = recipe.execute(local_env)
    run.get_result(timeout=90)
    return json.loads((run.job_dir.models_dir / "statistics.json").read_text())["statistics"]


def test_exact_statistics_and_small_site_guard(tmp_path, local_env):
    stats = run_stats(tmp_path, local_env, noise=0.0)
    age = np.concatenate([pooled(i)[0] for i in (1, 2, 3)])
    bmi = np.concatenate([pooled(i)[1] for i in (1, 2)])  # site-3's 3 values stay home (min_count 10)
    for values, got in ((age, stats["age"]), (bmi, stats["bmi"])):
        assert got["count"] == values.size
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert got["stddev"] == pytest.approx(values.std(ddof=1), rel=1e-9)
        assert (got["min"], got["max"]) == pytest.approx((values.min(), values.max()))
        assert sum(got["histogram"]["counts"]) == values.size
        width = (values.max() - values.min()) / 40
        for q, value in got["quantiles"].items():
            assert abs(value - np.quantile(values, float(q))) <= width


def test_noise_hides_exact_values_but_keeps_the_picture(tmp_path, local_env):
    stats = run_stats(tmp_path, local_env, noise=0.01)
    age = np.concatenate([pooled(i)[0] for i in (1, 2, 3)])
    assert stats["age"]["mean"] == pytest.approx(age.mean(), rel=0.02)
    assert stats["age"]["min"] != pytest.approx(age.min(), abs=1e-9)  # coarsened, not a raw value
    assert stats["age"]["min"] <= age.min() and stats["age"]["max"] >= age.max()


def test_quantile_interpolates_within_a_bin():
    edges, counts = np.array([0.0, 1.0, 2.0]), np.array([2.0, 2.0])
    assert quantile(edges, counts, 0.5) == 1.0 and quantile(edges, counts, 0.25) == 0.5
