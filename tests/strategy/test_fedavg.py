"""FedAvg aggregation against hand-computed values."""

import numpy as np

from hpcflare.strategy import ClientUpdate, FedAvg

G = {"a": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[10]], dtype=np.int64)}


def agg(*updates):
    aggregator = FedAvg().new_aggregator(G)
    for u in updates:
        aggregator.add(u)
    return aggregator, aggregator.result()


def test_full_updates_weighted_mean():
    _, out = agg(
        ClientUpdate("s1", {"a": np.array([3.0, 4.0], np.float32)}, "FULL", 1.0),
        ClientUpdate("s2", {"a": np.array([7.0, 8.0], np.float32)}, "FULL", 3.0),
    )
    np.testing.assert_allclose(out["a"], [(3 + 21) / 4, (4 + 24) / 4])
    assert out["a"].dtype == np.float32


def test_diff_updates_are_added_to_global():
    _, out = agg(
        ClientUpdate("s1", {"a": np.array([1.0, 1.0], np.float32)}, "DIFF", 2.0),
        ClientUpdate("s2", {"a": np.array([4.0, -2.0], np.float32)}, "DIFF", 2.0),
    )
    np.testing.assert_allclose(out["a"], [1 + 2.5, 2 - 0.5])


def test_mixed_full_and_diff_in_one_round():
    _, out = agg(
        ClientUpdate("s1", {"a": np.array([3.0, 4.0], np.float32)}, "FULL", 1.0),  # diff (2, 2)
        ClientUpdate("s2", {"a": np.array([0.0, 2.0], np.float32)}, "DIFF", 1.0),
    )
    np.testing.assert_allclose(out["a"], [1 + 1.0, 2 + 2.0])


def test_missing_tensor_keeps_global_and_int_tensors_round():
    _, out = agg(
        ClientUpdate("s1", {"b": np.array([[13]])}, "FULL", 1.0),
        ClientUpdate("s2", {"b": np.array([[14]])}, "FULL", 1.0),
    )
    np.testing.assert_array_equal(out["a"], G["a"])
    assert out["b"].dtype == np.int64 and out["b"][0, 0] == 14  # 13.5 rounds half to even


def test_zero_weight_is_ignored_and_count_tracks_folds():
    aggregator, out = agg(
        ClientUpdate("s1", {"a": np.array([100.0, 100.0], np.float32)}, "FULL", 0.0),
        ClientUpdate("s2", {"a": np.array([5.0, 6.0], np.float32)}, "FULL", 1.0),
    )
    np.testing.assert_allclose(out["a"], [5, 6])
    assert aggregator.count == 1


def test_aggregator_does_not_keep_client_arrays():
    import gc
    import weakref

    class Arr(np.ndarray):
        pass

    value = np.array([1.0, 1.0], np.float32).view(Arr)
    ref = weakref.ref(value)
    aggregator = FedAvg().new_aggregator(G)
    aggregator.add(ClientUpdate("s1", {"a": value}, "FULL", 1.0))
    del value
    gc.collect()
    assert ref() is None  # memory is O(model): updates are folded, not stored
