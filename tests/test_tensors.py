"""Tensor helpers below the strategies: the blockwise finiteness check and the pool of block temporaries."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hpcflare.tensors import FINITE_BLOCK, SCRATCH, ScratchPool, all_finite, narrow_in_place
from hpcflare.transport.codec import BF16


@pytest.mark.parametrize("size", [0, 1, FINITE_BLOCK - 1, FINITE_BLOCK, 3 * FINITE_BLOCK + 7])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_a_bad_value_in_any_block(size, bad):
    value = np.ones(size, np.float32)
    assert all_finite(value)
    for where in sorted({0, size // 2, size - 1}) if size else []:
        spoiled = value.copy()
        spoiled[where] = bad
        assert not all_finite(spoiled)


def test_all_finite_on_views_16_bit_floats_and_shapes():
    grid = np.ones((300, 400), np.float16)
    grid[299, 399] = np.inf
    assert not all_finite(grid) and all_finite(grid[:, :399]) and all_finite(grid[:299].T)
    brain = np.ones(FINITE_BLOCK + 5, BF16)
    assert all_finite(brain)
    brain[-1] = np.nan
    assert not all_finite(brain)


def test_scratch_pool_reuses_buffers_never_lends_one_twice_and_keeps_few():
    pool = ScratchPool(keep=2)
    a, b = pool.take(1000, np.float32), pool.take(1000, np.float32)
    assert not np.shares_memory(a, b)
    pool.give(a)
    assert pool.take(500, np.float32) is a  # a free buffer that is large enough is reused
    assert pool.take(10, np.bool_) is not a  # one free list per dtype
    many = [pool.take(100, np.float32) for _ in range(50)]  # 50 threads' worth at once
    for buf in many:
        pool.give(buf)
    assert pool.free_buffers(np.float32) == 2  # what the pool keeps afterwards is bounded


def test_many_threads_checking_at_once_leave_a_bounded_pool_behind():
    """500 virtual clients validate their results in their own threads: the pool keeps at most SCRATCH.keep
    buffers afterwards, not one per thread."""
    values = [np.ones(FINITE_BLOCK * 2, np.float32) for _ in range(4)]
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(all(all_finite(v) for v in values))) for _ in range(64)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 64
    assert SCRATCH.free_buffers(np.bool_) <= SCRATCH.keep


def test_narrow_in_place_reuses_the_wide_buffer():
    wide = np.arange(10, dtype=np.float32) + 0.25
    narrow = narrow_in_place(wide, np.float16, elements=3)
    assert narrow.dtype == np.float16 and np.shares_memory(narrow, wide)
    np.testing.assert_array_equal(narrow, (np.arange(10) + 0.25).astype(np.float16))
