"""The server's rounds: plan one, open it for the live clients, wait until everyone answered (or the deadline
with enough results), then fold the new model, checked for NaN/Inf before anything is published.

A round that loses its coordinator starts again without it; one that cannot reach ``min_clients`` fails
naming who answered, who was rejected and who was lost.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from hpcflare import errors
from hpcflare.job import JobConfig, JobState
from hpcflare.rank_logger import RankLogger, plural
from hpcflare.runtime.host.checkpoints import Checkpoints
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.membership import Membership, MemberState
from hpcflare.runtime.host.round import INITIAL_METRICS, NR_AGGREGATED, Round
from hpcflare.runtime.host.selection import ModelSelector
from hpcflare.runtime.host.tracking import Tracker, round_means
from hpcflare.settings import Settings
from hpcflare.strategy.api import Strategy, TaskKind
from hpcflare.tensors import all_finite
from hpcflare.transport.codec import is_float


class RoundDriver:
    """Mixed into :class:`~hpcflare.runtime.server.FLServer` (a RoundHost): how it runs one round."""

    config: JobConfig
    settings: Settings
    log: RankLogger
    strategy: Strategy
    members: Membership
    model: GlobalModel
    last_metrics: dict[str, float]
    last_aggregated: int
    bytes_sent: int
    tracker: Tracker
    checkpoints: Checkpoints
    selector: ModelSelector
    _cv: threading.Condition
    live_children: Callable[[], set[str]]
    open_round: Callable[..., Round]
    close_round: Callable[[Round], None]
    expire_dead: Callable[[int], None]
    _status: Callable[..., None]
    _check_abort: Callable[[], None]
    _new_model: Callable[..., GlobalModel]

    def _run_round(self, number: int) -> None:
        cfg, s = self.config, self.settings
        sent_before = self.bytes_sent
        alive = self.live_children()
        live = [c for c in cfg.clients if c in alive]
        plan = self.strategy.plan_round(number, cfg.num_rounds, live)
        if self.last_metrics:
            plan.meta.setdefault(INITIAL_METRICS, self.last_metrics)
        if self.last_aggregated:  # NVFlare's meta of the aggregated model: how many results made it
            plan.meta.setdefault(NR_AGGREGATED, self.last_aggregated)
        if plan.skip:
            self.log.info("round_skipped", f"round {number}/{cfg.num_rounds}: nothing to do", round=number)
            self._keep(number)
            return
        kept = self.model  # evaluation rounds may serve another model; the global one stays
        model = kept if plan.model is None else self._new_model(plan.model, number)
        if plan.targets is not None:
            live = [c for c in live if c in plan.targets]
        need = max(cfg.min_clients, math.ceil(cfg.min_fraction * len(live)))
        if plan.targets is not None:
            need = min(need, max(1, len(live)))

        def announce(rnd: Round) -> None:  # logged before any site can take the task
            self.log.info(
                "round_started",
                f"round {number}/{cfg.num_rounds} started: task {rnd.task_id} ({plan.task}) "
                f"for {plural(len(live), 'client')}",
                round=number,
                task_id=rnd.task_id,
                clients=live,
                task=plan.task,
            )

        rnd = self.open_round(number, model, plan=plan, announce=announce)
        self._status(JobState.RUNNING)
        deadline = rnd.started + s.round_timeout
        restart = False
        with self._cv:
            while True:
                self._check_abort()
                self.expire_dead(number)
                everyone = self.live_children()
                live_set = everyone & set(plan.targets) if plan.targets is not None else everyone
                answered = rnd.answered()
                if plan.coordinator and plan.coordinator not in everyone and plan.coordinator not in answered:
                    self.log.warning(
                        "round_restarted",
                        f"round {number}: {plan.coordinator}, which coordinates it, is "
                        "gone; restarting the round without it",
                        round=number,
                        lost=plan.coordinator,
                    )
                    restart = True
                    break
                if live_set <= answered and len(rnd.accepted) >= need:
                    break
                if len(rnd.accepted) + len(live_set - answered) < need:
                    raise errors.RoundFailedError(
                        self._shortfall(
                            number,
                            len(rnd.accepted),
                            len(live_set - answered),
                            _need(cfg.min_clients, cfg.min_fraction, need),
                            rnd.rejected,
                        )
                    )
                if time.monotonic() >= deadline:
                    if len(rnd.accepted) >= need:
                        stragglers = sorted(live_set - answered)
                        self.log.warning(
                            "stragglers",
                            f"round {number}: closing at settings.round_timeout={s.round_timeout:g}s "
                            f"without {stragglers}",
                            round=number,
                            stragglers=stragglers,
                        )
                        break
                    raise errors.RoundFailedError(
                        f"round {number}: {len(rnd.accepted)} accepted result(s) by settings.round_timeout={s.round_timeout:g}s, "
                        f"fewer than {_need(cfg.min_clients, cfg.min_fraction, need)}; still waiting for "
                        f"{sorted(live_set - answered)}"
                    )
                self._cv.wait(0.5)
        self.close_round(rnd)
        if restart:
            self.model = kept
            return self._run_round(number)
        t0 = time.monotonic()
        if plan.task == TaskKind.TRAIN and plan.aggregate:
            fresh = self._new_model(
                _replacing(rnd.model, _finite(rnd.aggregator.result_items(), number)),
                number,
                nbytes=rnd.model.nbytes,
            )
            self.strategy.check_aggregate(number)  # raises before a broken aggregate is served or kept
            self.model = fresh
        else:
            self.model = kept
        self.strategy.round_closed(number, plan, rnd.accepted)
        rnd.aggregator = None  # type: ignore[assignment]
        means = round_means(rnd.accepted, rnd.weights)
        self.selector.observe(number, means)  # scores round number-1's model: still the checkpoint on disk
        aggregated = time.monotonic() - t0
        # completed means kept: nothing below reports the round before its checkpoint is durable
        self._keep(number)
        summary = _summarize(rnd.accepted)
        self.log.info(
            "round_completed",
            f"round {number}/{cfg.num_rounds} completed: {plural(len(rnd.accepted), 'result')} "
            f"aggregated in {aggregated:.2f}s (round took {time.monotonic() - rnd.started:.1f}s)"
            + (f"; metrics {summary}" if summary else ""),
            round=number,
            accepted=sorted(rnd.accepted),
            rejected=rnd.rejected,
            metrics=rnd.accepted,
            seconds=time.monotonic() - rnd.started,
            bytes_sent=self.bytes_sent - sent_before,
            aggregate_seconds=round(aggregated, 6),
            checkpoint_seconds=round(time.monotonic() - t0 - aggregated, 6),
        )
        self.tracker.record_round(number, rnd.accepted, means)
        if plan.task == TaskKind.TRAIN and means:
            self.last_metrics = means  # sent with the next round's task (FLModel.metrics, as in NVFlare)
        if plan.task == TaskKind.TRAIN:
            self.last_aggregated = len(rnd.accepted)

    def _keep(self, number: int) -> None:
        """Round ``number``'s model and strategy state become the checkpoint, durably, before the round is
        reported completed anywhere (log, status, tracking)."""
        self.checkpoints.save(self.model, number, self.strategy.state_dict())

    def _shortfall(
        self, number: int, accepted: int, working: int, need: str, rejected: dict[str, str]
    ) -> str:
        """Why a round cannot close, cause first: the sites that failed or died (earliest first) and the
        results rejected, then the count that falls short."""
        lost = sorted(
            (r for r in self.members.records() if r.state in (MemberState.DEAD, MemberState.FAILED)),
            key=lambda r: r.last_seen,
        )
        causes = [f"{r.site} {r.state}: {r.reason}"[:300] for r in lost[:SHORTFALL_CAUSES]]
        causes += [
            f"{site}'s result rejected: {why}"[:300]
            for site, why in list(rejected.items())[:SHORTFALL_CAUSES]
        ]
        more = len(lost) + len(rejected) - len(causes)
        head = "; ".join(causes) + (f" (and {more} more: see the server log)" if more > 0 else "")
        return (
            f"{head or 'no site failed or was rejected'}; so round {number} cannot close: {accepted} accepted "
            f"result(s) and {working} client(s) still working, fewer than {need}"
        )

    def _lost(self) -> dict[str, str]:
        return {
            r.site: f"{r.state}: {r.reason}"[:200]
            for r in self.members.records()
            if r.state in (MemberState.DEAD, MemberState.FAILED)
        }


SHORTFALL_CAUSES = 3
"""How many failed sites and rejected results a round's failure names before 'and N more'."""


def _replacing(old: GlobalModel, items: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Yield the new tensors, dropping each old one once its successor is encoded (the round is closed,
    so nobody downloads the old model any more): peak memory ~2x the model instead of 3x."""
    for name, value in items:
        yield name, value
        old.blobs.pop(name, None)
        old.params.pop(name, None)
        old.release(name)


def _finite(items: Iterator[tuple[str, Any]], number: int) -> Iterator[tuple[str, Any]]:
    """The new model's tensors, checked before anything is published or checkpointed: a NaN/Inf aggregate
    fails the round (the last checkpoint stays the last good model) instead of poisoning every later round."""
    for name, value in items:
        if is_float(value.dtype) and not all_finite(value):
            raise errors.RoundFailedError(
                f"round {number}: the aggregate of tensor {name!r} is not finite (NaN/Inf): the accepted updates "
                f"overflowed {value.dtype}; nothing of round {number} was published or checkpointed (see the weights "
                f"and sites in this round's result_accepted events; resume from round {number - 1}'s checkpoint)"
            )
        yield name, value


def _need(min_clients: int, min_fraction: float, need: int) -> str:
    if need == min_clients:
        return f"min_clients={min_clients}"
    return f"{need} (min_fraction={min_fraction:g} of the round's clients; min_clients={min_clients})"


def _summarize(metrics: dict[str, dict[str, Any]]) -> str:
    keys = sorted(
        {
            k
            for m in metrics.values()
            for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    parts = []
    for key in keys[:5]:
        values = [m[key] for m in metrics.values() if isinstance(m.get(key), (int, float))]
        parts.append(f"{key}={sum(values) / len(values):.4g}")
    return ", ".join(parts)
