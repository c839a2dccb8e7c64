"""Aggregation math: the FedAvg block fold through the pooled temporaries, concurrent folds, partials."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from hpcflare.runtime.cluster.memory import MALLOC_ENV
from hpcflare.tensors import FOLD_BLOCK

FOLD_PROBE = """
import resource, numpy as np
from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.tensors import all_finite
from hpcflare.strategy.api import ClientUpdate, UpdateKind
base = {f"t{i}": np.zeros(4 << 20, np.float32) for i in range(4)}
updates = [{k: v + site for k, v in base.items()} for site in range(8)]
agg = WeightedMeanAggregator(base)
agg.add(ClientUpdate("warm-up", updates[0], UpdateKind.FULL, 1.0, {}, {}))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for site, params in enumerate(updates[1:]):
    assert all(all_finite(v) for v in params.values())
    agg.add(ClientUpdate(f"s{site}", params, UpdateKind.FULL, 2.0, {}, {}))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
assert abs(agg.result()["t0"][0] - 2 * sum(range(1, 8)) / 15) < 1e-5
"""


def test_folding_many_updates_faults_no_fresh_pages_per_block():
    """7 updates of 4 x 16 MB folded under the ranks' glibc settings (runtime.memory.MALLOC_ENV): the checks
    and the fold reuse their temporaries, so page faults stay far below one per 4 KiB of update (a block
    temporary allocated afresh each time was trimmed and faulted in again: ~31,000 faults here)."""
    done = subprocess.run(
        [sys.executable, "-c", FOLD_PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **MALLOC_ENV},
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 7 * 64 * 256 // 20  # < 5% of one fault per page of the updates


def test_first_update_is_written_into_the_sum_and_later_ones_added():
    """The first update of a tensor initializes its sum (no zeros to add to): FULL and DIFF still mix, weights
    count, integer tensors round, and a tensor only some sites sent keeps its global value elsewhere."""
    from hpcflare.strategy.aggregate import WeightedMeanAggregator
    from hpcflare.strategy.api import ClientUpdate, UpdateKind

    base = {
        "w": np.full(FOLD_BLOCK + 3, 10.0, np.float32),
        "n": np.array([4, 8], np.int64),
        "only_a": np.ones(3, np.float32),
    }
    agg = WeightedMeanAggregator(base)
    agg.add(
        ClientUpdate(
            "a",
            {"w": base["w"] + 2, "n": np.array([6, 8]), "only_a": np.full(3, 4.0, np.float32)},
            UpdateKind.FULL,
            1.0,
        )
    )
    agg.add(
        ClientUpdate(
            "b",
            {"w": np.full(FOLD_BLOCK + 3, -1.0, np.float32), "n": np.array([1, -2])},
            UpdateKind.DIFF,
            3.0,
        )
    )
    out = agg.result()
    np.testing.assert_allclose(out["w"], 10 + (1 * 2 + 3 * -1) / 4)
    np.testing.assert_array_equal(out["n"], [4 + round((2 + 3) / 4), 8 + round(-6 / 4)])
    np.testing.assert_allclose(out["only_a"], 4.0)


def test_a_fold_that_breaks_midway_leaves_no_half_written_sum():
    from hpcflare.strategy.aggregate import WeightedMeanAggregator
    from hpcflare.strategy.api import ClientUpdate, UpdateKind

    class Breaks(dict):
        def iter_blocks(self, name):
            yield 0, np.full(4, 5.0, np.float32)
            raise OSError("spool file went away")

    base = {"w": np.zeros(8, np.float32)}
    agg = WeightedMeanAggregator(base)
    with pytest.raises(OSError):
        agg.add(ClientUpdate("a", Breaks(w=None), UpdateKind.FULL, 1.0))
    agg.add(ClientUpdate("b", {"w": np.full(8, 2.0, np.float32)}, UpdateKind.FULL, 1.0))
    np.testing.assert_allclose(agg.result()["w"], 2.0)


def test_first_partial_is_copied_not_referenced():
    from hpcflare.strategy.aggregate import WeightedMeanAggregator

    base = {"w": np.zeros(4, np.float32)}
    partial = np.full(4, 6.0, np.float32)
    partial.setflags(write=False)  # a mapped memory file from a client rank is read-only
    agg = WeightedMeanAggregator(base)
    agg.add_partial({"w": partial}, {"w": 2.0}, 2)
    agg.add_partial({"w": np.full(4, 2.0, np.float32)}, {"w": 1.0}, 1)
    np.testing.assert_allclose(agg.result()["w"], 8.0 / 3)
    np.testing.assert_array_equal(partial, 6.0)


def test_concurrent_folds_give_the_serial_sum_and_close_waits_for_them():
    """Eight threads fold at once (a client rank's sites finishing together): each tensor's sum takes every
    update exactly once; close() returns only after the folds in progress."""
    import time

    from hpcflare.runtime.host.global_model import GlobalModel
    from hpcflare.runtime.host.round import Round
    from hpcflare.strategy.api import ClientUpdate, UpdateKind
    from hpcflare.strategy.fedavg import FedAvg

    base = {f"t{i}": np.zeros(FOLD_BLOCK * 2 + 1, np.float32) for i in range(5)}
    changed = threading.Condition()
    rnd = Round(1, FedAvg(), GlobalModel(base, 1), threading.Lock(), changed)
    assert rnd.aggregator.concurrent
    slow_reads = threading.Semaphore(0)

    class Slow(dict):  # in-memory params whose blocks come slowly: folds overlap
        def iter_blocks(self, name):
            flat = self[name].reshape(-1)
            for first in range(0, flat.size, FOLD_BLOCK):
                time.sleep(0.002)
                yield first, flat[first : first + FOLD_BLOCK]
            slow_reads.release()

    threads = [
        threading.Thread(
            target=rnd.fold,
            args=(
                ClientUpdate(
                    f"s{k}", Slow({n: np.full_like(v, k + 1) for n, v in base.items()}), UpdateKind.FULL, 1.0
                ),
            ),
        )
        for k in range(8)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while (
        rnd._folding + len(rnd.accepted) < 8
    ):  # every fold under way or done (a fold holds a share of the lock)
        assert time.monotonic() < deadline
        time.sleep(0.001)
    slow_reads.acquire()  # at least one tensor folded, the rest still going: close() must wait for them
    rnd.close()
    assert len(rnd.accepted) == 8
    for t in threads:
        t.join()
    sums, weights = rnd.aggregator.partial()
    for name in base:
        np.testing.assert_array_equal(sums[name], sum(range(1, 9)))
        assert weights[name] == 8.0


def test_an_aggregator_with_its_own_add_is_folded_one_thread_at_a_time():
    from hpcflare.strategy.aggregate import WeightedMeanAggregator
    from hpcflare.strategy.scaffold import Scaffold

    class Custom(WeightedMeanAggregator):
        def add(self, update):
            super().add(update)

    assert not Custom({}).concurrent
    assert not Scaffold(num_clients=2).new_aggregator({"w": np.zeros(2, np.float32)}).concurrent


def test_a_result_after_close_is_refused_by_name():
    from hpcflare import errors
    from hpcflare.runtime.host.global_model import GlobalModel
    from hpcflare.runtime.host.round import Round
    from hpcflare.strategy.api import ClientUpdate, UpdateKind
    from hpcflare.strategy.fedavg import FedAvg

    base = {"w": np.zeros(4, np.float32)}
    rnd = Round(3, FedAvg(), GlobalModel(base, 1), threading.Lock(), threading.Condition())
    rnd.close()
    with pytest.raises(errors.StaleTaskError, match="result from site-7 arrived after round 3 closed"):
        rnd.fold(ClientUpdate("site-7", {"w": np.ones(4, np.float32)}, UpdateKind.FULL, 1.0))
    assert not rnd.accepted and rnd.aggregator.count == 0
