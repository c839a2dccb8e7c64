"""Aggregation math, in one pure module: accumulator dtypes and the in-time weighted mean.

Strategies (FedAvg, FedOpt, SCAFFOLD, the workflows) import from here; the tensor helpers it builds on
(accumulator dtypes, blocks, the finiteness check) are in hpcflare/tensors.py. The weighted
mean folds each update the moment it arrives (``add``), merges relays' partial sums (``add_partial``), and
yields the new model tensor by tensor (``result_items``), so server memory stays ~1x the model.
FULL updates are folded as their difference to the global model, so FULL and DIFF results mix in one round;
tensors a client did not send keep their global value (per-tensor weight sums).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from hpcflare.strategy.api import Aggregator, ClientUpdate, Params, UpdateKind
from hpcflare.tensors import SCRATCH, Lease, acc_dtype, blocks_of, narrow_in_place


class WeightedMeanAggregator(Aggregator):
    decomposable = True

    def __init__(
        self, global_params: Mapping[str, np.ndarray], site_factors: Mapping[str, float] | None = None
    ) -> None:
        self._global = global_params
        self._factors = dict(site_factors or {})
        self._sums: dict[str, np.ndarray] = {}
        self._weights: dict[str, float] = {}
        self._count = 0
        self._books = threading.Lock()  # the dicts and the count; each tensor's sum has a lock of its own
        self._tensor_locks: dict[str, threading.Lock] = {}

    @property
    def concurrent(self) -> bool:  # type: ignore[override]
        """Results that arrive together are folded together, each thread on a tensor no other one holds
        (a client rank's sites finish at once: one core folding while the others wait was most of a round).
        A subclass with its own add() is called one thread at a time."""
        return type(self).add is WeightedMeanAggregator.add

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: ClientUpdate) -> None:
        if update.site in self._factors:
            update = dataclasses.replace(update, weight=update.weight * self._factors[update.site])
        if update.weight <= 0:
            return
        blockwise = getattr(update.params, "iter_blocks", None)
        release = getattr(self._global, "release", None)
        pending = list(update.params)
        while pending:  # take a tensor no other thread is folding; wait only when every one left is taken
            name = next((n for n in pending if self._tensor_lock(n).acquire(blocking=False)), None)
            if name is None:
                name = pending[0]
                self._tensor_lock(name).acquire()
            try:
                self._fold_tensor(name, update, blockwise, release)
            finally:
                self._tensor_locks[name].release()
            pending.remove(name)
        with self._books:
            self._count += 1

    def _tensor_lock(self, name: str) -> threading.Lock:
        with self._books:
            return self._tensor_locks.setdefault(name, threading.Lock())

    def _fold_tensor(self, name: str, update: ClientUpdate, blockwise: Any, release: Any) -> None:
        """Fold one tensor of ``update`` into its sum (the caller holds that tensor's lock)."""
        base = self._global[name]
        acc = self._sums.get(name)
        first = acc is None  # the first update of a tensor is written into its sum, not added to zeros
        if acc is None:
            acc = np.empty(base.shape, dtype=acc_dtype(base.dtype))
        # a few MB at a time (spooled uploads are read so), through one small reused temporary: a
        # tensor-sized temporary per update was fresh memory to fault in for every site and tensor
        blocks = blockwise(name) if blockwise is not None else blocks_of(update.params[name])
        # a model served from a spool file hands the pages just read back to the page cache as it goes
        done = (lambda start, nbytes: release(name, start, nbytes)) if release is not None else None
        _fold_blocks(acc, base, blocks, update.params_type == UpdateKind.FULL, update.weight, done, first)
        with self._books:  # a sum appears only once whole: a fold that broke midway leaves none behind
            self._sums[name] = acc
            self._weights[name] = self._weights.get(name, 0.0) + update.weight

    def partial(self) -> tuple[Params, dict[str, float]]:
        return self._sums, dict(self._weights)

    def add_partial(self, sums: Params, weights: dict[str, float], count: int) -> None:
        for name, value in sums.items():
            base = self._global[name]
            acc = self._sums.get(name)
            if acc is None:  # a copy, not zeros plus the sum: one pass, no zeroed pages to fault in first
                acc = self._sums[name] = np.empty(base.shape, dtype=acc_dtype(base.dtype))
                acc[...] = value
            else:
                acc += np.asarray(value, dtype=acc.dtype)
            self._weights[name] = self._weights.get(name, 0.0) + float(weights[name])
        self._count += count

    def result(self) -> Params:
        return dict(self.result_items())

    def result_items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Tensor by tensor, dropping each sum as it is turned into the new value (peak ~1 tensor extra)."""
        for name in list(self._global):  # names only: the caller may free each old tensor once replaced
            base = self._global.get(name)
            if base is None:
                continue
            acc = self._sums.pop(name, None)
            if acc is None:
                value = np.array(base, copy=True)
            else:
                acc /= acc.dtype.type(self._weights[name])
                value = self.apply(name, base, acc)
                del acc
            del base
            yield name, value
            del value

    def apply(self, name: str, base: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """The new value of one tensor from its weighted mean update (FedAvg: base + mean; FedOpt overrides)."""
        release = getattr(self._global, "release", None)
        step = max(1, RELEASE_EVERY // max(1, base.dtype.itemsize))
        flat_delta, flat_base = mean_delta.reshape(-1), np.asarray(base).reshape(-1)
        for first in range(0, flat_base.size, step):  # a spool-file model's pages go back as they are read
            flat_delta[first : first + step] += flat_base[first : first + step]
            if release is not None:
                release(name, first * flat_base.itemsize, step * flat_base.itemsize)
        if np.issubdtype(base.dtype, np.integer):
            np.rint(mean_delta, out=mean_delta)
        return narrow_in_place(mean_delta, base.dtype)


RELEASE_EVERY = 16 << 20
"""Bytes of the global model a FULL fold reads before it lets a spool-file model's pages go (``done``)."""


def _fold_blocks(
    acc: np.ndarray,
    base: np.ndarray,
    blocks: Iterator[tuple[int, np.ndarray]],
    full: bool,
    weight: float,
    done: Callable[[int, int | None], None] | None = None,
    assign: bool = False,
) -> None:
    """acc += weight * (block - base) (FULL) or weight * block (DIFF), block by block; the update itself is
    never written to (it may be the caller's own array). ``done(start, nbytes)``: the base's bytes read so far.
    ``assign``: acc = ... instead (its first update; acc may hold anything before)."""
    flat_acc, flat_base = acc.reshape(-1), np.asarray(base).reshape(-1)
    w = acc.dtype.type(weight)
    released = covered = 0
    with Lease(SCRATCH, acc.dtype) as lease:
        for first, block in blocks:
            if done is not None and full and (first - released) * flat_base.itemsize >= RELEASE_EVERY:
                done(released * flat_base.itemsize, (first - released) * flat_base.itemsize)
                released = first
            last = first + block.size
            delta = flat_acc[first:last] if assign else lease.get(block.size)
            if full:
                np.subtract(block, flat_base[first:last], out=delta, dtype=acc.dtype)
            else:
                delta[...] = block
            if weight != 1.0:
                delta *= w
            if not assign:
                flat_acc[first:last] += delta
            covered = max(covered, last)
    if assign and covered < flat_acc.size:  # elements no block carried: no change there
        flat_acc[covered:] = 0
    if done is not None and full:
        done(released * flat_base.itemsize, None)
