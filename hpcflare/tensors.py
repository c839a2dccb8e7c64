"""Tensor math below the strategies: accumulator dtypes, block iteration, in-place narrowing, the finiteness
check and the pool of block temporaries they share.

Upload validation (runtime), the aggregation math (strategy/aggregate.py) and private aggregation import from
here; nothing here knows about strategies, rounds or sites.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from hpcflare.transport.codec import is_float


def acc_dtype(dtype: np.dtype) -> np.dtype:
    """float32/float64 accumulate in their own precision (keeps server memory ~1x model); 16-bit floats (fp16,
    bf16) in float32, so a sum of hundreds of updates does not lose their low bits; ints/bools in float64."""
    if np.issubdtype(dtype, np.floating) and np.dtype(dtype).itemsize >= 4:
        return np.dtype(dtype)
    return np.dtype(np.float32) if is_float(dtype) else np.dtype(np.float64)


FOLD_BLOCK = 1 << 18
"""Elements per block when folding an in-memory update (1 MB of float32: the temporary stays in cache)."""


class ScratchPool:
    """Block temporaries reused across calls and threads. A temporary allocated afresh for every tensor and
    block is memory glibc hands back to the OS at once (ranks trim eagerly, see runtime.memory) and faults in
    again, one page fault per 4 KiB: at 8 sites x 100 MB a round that was most of a client rank's system time.
    At most ``keep`` free buffers per dtype are kept, so 500 virtual clients' threads hold no 500 buffers."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: dict[np.dtype, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, elements: int, dtype: Any) -> np.ndarray:
        """A buffer of at least ``elements`` that no one else holds until :meth:`give` returns it."""
        dtype = np.dtype(dtype)
        with self._lock:
            free = self._free.get(dtype, [])
            for i, buf in enumerate(free):
                if buf.size >= elements:
                    return free.pop(i)
        return np.empty(elements, dtype)

    def give(self, buf: np.ndarray) -> None:
        with self._lock:
            free = self._free.setdefault(buf.dtype, [])
            if len(free) < self.keep:
                free.append(buf)

    def free_buffers(self, dtype: Any) -> int:
        with self._lock:
            return len(self._free.get(np.dtype(dtype), []))


class Lease:
    """One caller's temporary from a pool, grown when a larger block comes; back to the pool on exit."""

    def __init__(self, pool: ScratchPool, dtype: Any) -> None:
        self.pool, self.dtype = pool, np.dtype(dtype)
        self.buf: np.ndarray | None = None

    def get(self, elements: int) -> np.ndarray:
        if self.buf is None or self.buf.size < elements:
            if self.buf is not None:
                self.pool.give(self.buf)
            self.buf = self.pool.take(elements, self.dtype)
        buf: np.ndarray = self.buf[:elements]
        return buf

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.buf is not None:
            self.pool.give(self.buf)
            self.buf = None


SCRATCH = ScratchPool(keep=max(2, min(16, os.cpu_count() or 2)))
"""The process's block temporaries: about one per core is ever busy (folds and checks are memory-bound)."""


def blocks_of(value: Any, elements: int = FOLD_BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """(element offset, 1-D view) pairs over an in-memory tensor, ``elements`` at a time (no copies)."""
    flat = np.asarray(value).reshape(-1)
    for first in range(0, flat.size, max(1, elements)):
        yield first, flat[first : first + max(1, elements)]


def narrow_in_place(wide: np.ndarray, dtype: Any, elements: int = FOLD_BLOCK) -> np.ndarray:
    """``wide`` (a sum we own) as ``dtype`` of no larger items, converted inside its own buffer a block at a
    time: a bf16 model's new tensor then needs no second tensor-sized array beside its fp32 sum (0.5x of it).
    Safe front to back: a block's narrow bytes land only where elements already read lay. Returns a view."""
    dtype = np.dtype(dtype)
    if wide.dtype == dtype:
        return wide
    if dtype.itemsize > wide.dtype.itemsize or not wide.flags.c_contiguous or not wide.flags.writeable:
        return wide.astype(dtype)
    flat = wide.reshape(-1)
    out = flat.view(np.uint8)[: flat.size * dtype.itemsize].view(dtype)
    for first in range(0, flat.size, max(1, elements)):
        part = flat[first : first + max(1, elements)].astype(dtype)
        out[first : first + part.size] = part
    shaped: np.ndarray = out.reshape(wide.shape)
    return shaped


FINITE_BLOCK = 1 << 16
"""Elements per finiteness-check block: the boolean temporary (64 KiB, reused) stays in cache."""


def all_finite(value: np.ndarray, block: int = FINITE_BLOCK) -> bool:
    """np.isfinite(...).all() in blocks through one pooled temporary (no tensor-sized mask)."""
    flat = np.asarray(value).reshape(-1)
    with Lease(SCRATCH, np.bool_) as lease:
        mask = lease.get(min(block, flat.size))
        for first in range(0, flat.size, max(1, block)):
            part = flat[first : first + max(1, block)]
            out = mask[: part.size]
            np.isfinite(part, out=out)
            if not out.all():
                return False
    return True
