"""One round at one host (server, relay or swarm peer): its task, model and aggregator, who answered how,
and the rules for folding each kind of report into it.

Folding happens under the host's aggregation lock, so closing a round (``close``) waits for a fold in
progress and nothing is folded afterwards; ``changed`` (the host's condition) wakes whoever waits on answers.
An aggregator that folds results concurrently (``Aggregator.concurrent``) has client results folded side by
side, sharing that lock: whatever else takes it (partials, swarm reports, close) waits for them to finish.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hpcflare import errors
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.strategy.api import ClientUpdate, RoundPlan, Strategy, UpdateKind

WEIGHT_KEY = "NUM_STEPS_CURRENT_ROUND"
"""The meta key whose value weighs a result in the mean (NVFlare's MetaKey.NUM_STEPS_CURRENT_ROUND)."""
INITIAL_METRICS = "initial_metrics"
"""Task meta key carrying the previous round's aggregated metrics (NVFlare's MetaKey.INITIAL_METRICS)."""
NR_AGGREGATED = "nr_aggregated"
"""Task meta key: how many results the previous training round aggregated (NVFlare's FLModel meta)."""
MAX_WEIGHT = 1e12
"""Largest accepted weight: weights are step or sample counts; anything larger is an error or an attack."""


class Round:
    def __init__(
        self,
        number: int,
        strategy: Strategy,
        model: GlobalModel,
        lock: threading.Lock,
        changed: threading.Condition,
        task_id: str | None = None,
        plan: RoundPlan | None = None,
    ) -> None:
        self.number = number
        self.plan = plan or RoundPlan()
        self.task_id = task_id or uuid.uuid4().hex[:12]
        self.model = model
        self.aggregator = strategy.new_aggregator(model.params)
        self.expected = strategy.upload_expectation(model.params)
        """What results must look like (hpcflare.runtime.host.upload checks them against it)."""
        self.accepted: dict[str, dict[str, Any]] = {}  # site -> metrics
        self.weights: dict[str, float] = {}  # site -> its result's weight (weighs its metrics in the mean)
        self.rejected: dict[str, str] = {}  # site -> reason
        self.partials: set[str] = set()  # relays whose partial aggregate was folded
        self.open = True
        self.started = time.monotonic()
        self.task_reply: dict[str, Any] | None = None
        """The GetTask reply for this round, built at its first request (the same for every child)."""
        self._lock, self._changed = lock, changed
        self._folding = 0
        """Concurrent folds in progress (they hold the lock shared, see _shared/_exclusive)."""

    def answered(self) -> set[str]:
        return set(self.accepted) | set(self.rejected)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The aggregation lock, once no concurrent fold is in progress (none starts while it is held)."""
        with self._lock:
            with self._changed:
                while self._folding:
                    self._changed.wait()
            yield

    @contextmanager
    def _shared(self, what: str) -> Iterator[None]:
        """A concurrent fold's share of the aggregation lock (``what``: named if the round has closed)."""
        with self._lock, self._changed:
            self._check_open(what)
            self._folding += 1
        try:
            yield
        finally:
            with self._changed:
                self._folding -= 1
                self._changed.notify_all()

    def close(self) -> None:
        """No result is folded into this round after this returns."""
        with self._changed:
            self.open = False
        with self._exclusive():  # waits for folds in progress
            pass

    def _check_open(self, what: str) -> None:
        if not self.open:
            raise errors.StaleTaskError(f"{what} arrived after round {self.number} closed; discarded")

    def reject(self, site: str, reason: str) -> None:
        with self._changed:
            self.rejected.setdefault(site, reason)
            self._changed.notify_all()

    def fold(self, update: ClientUpdate) -> None:
        what = f"result from {update.site}"
        with self._shared(what) if self.aggregator.concurrent else self._exclusive():
            self._check_open(what)
            self.aggregator.add(update)
            with self._changed:
                self.accepted[update.site] = update.metrics
                self.weights[update.site] = update.weight

    def fold_partial(
        self, relay: str, partial: dict[str, Any], sums: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A relay's weighted partial sum over its children (its header's ``partial`` section); each child counts
        as answered here. Returns the (accepted, rejected) sites it reported."""
        sites, rejected = as_dict(partial.get("sites")), as_dict(partial.get("rejected"))
        weights = as_dict(partial.get("weights"))
        if set(sums) - set(weights) or any(
            not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights.values()
        ):
            raise errors.MalformedMessageError(f"partial from {relay}: per-tensor weights missing or invalid")
        with self._exclusive():
            self._check_open(f"partial from {relay}")
            overlap = (set(sites) | set(rejected)) & self.answered()
            if overlap:
                raise errors.StaleTaskError(
                    f"partial from {relay} repeats sites that already answered: {sorted(overlap)[:10]}"
                )
            self.aggregator.check_partial_sites([str(s) for s in sites])
            self.aggregator.add_partial(sums, {k: float(weights[k]) for k in sums}, len(sites))
            with self._changed:
                self.partials.add(relay)
                for site, info in sites.items():
                    self.accepted[str(site)] = as_dict(as_dict(info).get("metrics"))
                    weight = as_dict(info).get("weight", 1.0)
                    if (
                        isinstance(weight, (int, float))
                        and math.isfinite(weight)
                        and 0 <= weight <= MAX_WEIGHT
                    ):
                        self.weights[str(site)] = float(weight)
                for site, reason in rejected.items():
                    self.rejected[str(site)] = str(reason)[:500]
        return sites, rejected

    def fold_swarm(
        self, site: str, report: dict[str, Any], params: Any, clients: list[str]
    ) -> dict[str, Any]:
        """The round's coordinator (a swarm aggregator) reports the sites it folded and the model it made (its
        header's ``swarm`` section)."""
        if site != self.plan.coordinator:
            raise errors.UpdateRejectedError(f"{site} is not this round's swarm aggregator; report refused")
        accepted, rejected = as_dict(report.get("accepted")), as_dict(report.get("rejected"))
        with self._exclusive():
            self._check_open(f"swarm report from {site}")
            if len(params):
                self.aggregator.add(ClientUpdate(site, params, UpdateKind.FULL, 1.0))
            with self._changed:
                for name, metrics in accepted.items():
                    if name in clients:
                        self.accepted[str(name)] = as_dict(metrics)
                for name, reason in rejected.items():
                    if name in clients and name not in self.accepted:
                        self.rejected[str(name)] = str(reason)[:500]
        return report


def weight_of(meta: Any) -> float:
    """A result's weight in the mean, from its meta; refuses what could poison the aggregate."""
    raw = as_dict(meta).get(WEIGHT_KEY, 1)
    try:
        weight = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise errors.UpdateRejectedError(f"meta {WEIGHT_KEY} must be a number, got {raw!r:.40}") from None
    if not math.isfinite(weight) or weight < 0:
        raise errors.UpdateRejectedError(f"meta {WEIGHT_KEY} must be finite and >= 0, got {raw!r:.40}")
    if weight > MAX_WEIGHT:
        raise errors.UpdateRejectedError(
            f"meta {WEIGHT_KEY}={raw!r:.40} is larger than {MAX_WEIGHT:g}; send the "
            "number of local steps or samples"
        )
    return weight


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
