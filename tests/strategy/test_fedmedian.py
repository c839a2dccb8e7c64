"""FedMedian against hand-computed values."""

import numpy as np

from hpcflare.strategy import ClientUpdate, FedMedian

G = {"a": np.array([0.0, 10.0], dtype=np.float32), "n": np.array([5], dtype=np.int64)}


def test_median_of_full_and_diff_updates():
    aggregator = FedMedian().new_aggregator(G)
    aggregator.add(ClientUpdate("s1", {"a": np.array([1.0, 100.0], np.float32)}, "FULL", 1.0))
    aggregator.add(ClientUpdate("s2", {"a": np.array([2.0, 2.0], np.float32)}, "DIFF", 1.0))  # -> [2, 12]
    aggregator.add(ClientUpdate("s3", {"a": np.array([3.0, 11.0], np.float32)}, "FULL", 1.0))
    out = aggregator.result()
    np.testing.assert_array_equal(out["a"], [2.0, 12.0])  # the outlier 100 does not move it
    assert out["a"].dtype == np.float32
    np.testing.assert_array_equal(out["n"], G["n"])  # nobody sent it: unchanged


def test_not_decomposable():
    assert not FedMedian().new_aggregator(G).decomposable
