"""NVFlare's federated statistics (hello-tabular-stats shape) through ``hpcflare nvflare``: a DFStatisticsCore
generator at each site, the global numbers equal pandas on the union of the sites' data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

APP = Path(__file__).parent / "apps" / "stats"


def site_data(root: Path, sites: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(7)
    frames = {}
    for i in range(1, sites + 1):
        n = 200 * i
        frame = pd.DataFrame(
            {
                "Age": rng.integers(18, 90, n),
                "Income": rng.normal(50_000 * i, 8_000, n).round(2),
                "City": rng.choice(["a", "b"], n),
            }
        )
        frame.loc[::37, "Income"] = np.nan  # missing values are failures, not numbers
        (root / f"site-{i}").mkdir(parents=True)
        frame.to_csv(root / f"site-{i}" / "data.csv", index=False)
        frames[f"site-{i}"] = frame
    return frames


def test_hello_tabular_stats_shape_gives_the_union_statistics(tmp_path):
    frames = site_data(tmp_path / "data", 2)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcflare.nvflare",
            str(APP / "job.py"),
            "-d",
            str(tmp_path / "data"),
            "-w",
            str(tmp_path / "ws"),
        ],
        cwd=APP,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed: results in" in done.stdout  # SimEnv's execute() returned once the job had ended
    (job,) = (tmp_path / "ws").iterdir()
    stats = json.loads((job / "statistics" / "people_stats.json").read_text())
    train = pd.concat([f.iloc[: int(len(f) * 0.8)] for f in frames.values()])
    assert set(stats) == {"Age", "Income"}  # the string column is not a numeric feature
    income = stats["Income"]
    assert income["count"]["Global"]["train"] == int(train["Income"].count())
    assert income["count"]["site-1"]["train"] == int(frames["site-1"].iloc[:160]["Income"].count())
    assert income["mean"]["Global"]["train"] == pytest.approx(train["Income"].mean(), abs=1e-3)
    assert income["stddev"]["Global"]["train"] == pytest.approx(train["Income"].std(), rel=1e-6)
    age = stats["Age"]["histogram"]["Global"]["train"]  # the configured range and bins
    assert [b[:2] for b in age] == [[0, 20], [20, 40], [40, 60], [60, 80], [80, 100]]
    expected, _ = np.histogram(train["Age"], bins=5, range=(0, 100))
    assert [b[2] for b in age] == expected.tolist()
    # quantiles: each site's own exactly; the global ones merged from the sites' sketches, close to pandas
    site1 = frames["site-1"].iloc[:160]["Income"].dropna()
    assert income["quantile"]["site-1"]["train"]["50"] == pytest.approx(site1.quantile(0.5), abs=1e-3)
    spread = train["Income"].quantile(0.9) - train["Income"].quantile(0.1)
    for percent in (10, 50, 90):
        merged = income["quantile"]["Global"]["train"][str(percent)]
        assert merged == pytest.approx(train["Income"].quantile(percent / 100), abs=0.02 * spread), percent
    assert set(stats["Age"]["quantile"]["Global"]["train"]) == {"25", "50", "75"}
    bins = income["histogram"]["Global"]["test"]  # range from the sites' min and max
    assert len(bins) == 10 and sum(b[2] for b in bins) == income["count"]["Global"]["test"]
