"""NVFlare-spec statistics at the server: quantiles merged from the sites' sketches, and what a sketch must be."""

from __future__ import annotations

import numpy as np

from hpcflare.strategy.spec_stats import _valid, merge_quantiles


def test_quantiles_merged_from_site_sketches_follow_the_union():
    """Sites with different distributions and sizes: the merged quantiles are within 1% of the spread of
    numpy's on the union (each site sends its values at every whole percent, never its rows)."""
    rng = np.random.default_rng(3)
    parts = [rng.normal(0, 1, 5000), rng.exponential(2.0, 800) + 1, rng.uniform(-3, 5, 2200)]
    sketches = [(float(len(p)), list(np.quantile(p, np.linspace(0, 1, 101)))) for p in parts]
    union = np.concatenate(parts)
    merged = merge_quantiles(sketches, [5, 25, 50, 75, 95])
    spread = np.quantile(union, 0.95) - np.quantile(union, 0.05)
    for percent in (5, 25, 50, 75, 95):
        assert abs(merged[str(percent)] - np.quantile(union, percent / 100)) < 0.01 * spread, percent


def test_a_sketch_that_is_not_sorted_is_refused():
    assert _valid("sketch", [0.0, 1.0, 2.0]) and not _valid("sketch", [0.0, 2.0, 1.0])
    assert not _valid("sketch", [0.0, float("nan")]) and not _valid("quantiles", {"50": "x"})
