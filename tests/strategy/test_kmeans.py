"""Federated k-means' server side: the Lloyd step equals the centralized one, and bad models/updates are refused."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.errors import ConfigError, RoundFailedError, UpdateRejectedError
from hpcflare.strategy.api import ClientUpdate, UpdateKind
from hpcflare.strategy.kmeans import KMeans


def update(site: str, centers, counts) -> ClientUpdate:
    return ClientUpdate(
        site,
        {"centers": np.asarray(centers, float), "counts": np.asarray(counts, float)},
        UpdateKind.FULL,
        1.0,
    )


def test_lloyd_step_is_the_count_weighted_mean_and_empty_centers_stay():
    agg = KMeans(2).new_aggregator({"centers": np.array([[0.0, 0.0], [9.0, 9.0]]), "counts": np.ones(2)})
    agg.add(update("site-1", [[1.0, 1.0], [0.0, 0.0]], [1, 0]))
    agg.add(update("site-2", [[4.0, 4.0], [0.0, 0.0]], [3, 0]))
    out = agg.result()
    np.testing.assert_allclose(out["centers"], [[3.25, 3.25], [9.0, 9.0]])
    np.testing.assert_allclose(out["counts"], [4, 0])


def test_model_of_another_k_negative_counts_and_all_empty_round_one_are_refused():
    with pytest.raises(ConfigError, match=r"'centers': \(3, d\)"):
        KMeans(3).new_aggregator({"centers": np.zeros((2, 2)), "counts": np.zeros(2)})
    agg = KMeans(2).new_aggregator({"centers": np.zeros((2, 2)), "counts": np.zeros(2)})
    with pytest.raises(UpdateRejectedError, match="negative cluster counts"):
        agg.add(update("site-1", np.zeros((2, 2)), [-1, 2]))
    agg.add(update("site-1", np.zeros((2, 2)), [0, 0]))
    with pytest.raises(RoundFailedError, match="no site sent a cluster with rows"):
        agg.result()
