"""Experiment tracking on the server: every site's round metrics and per-step records, in the job's outputs.

Two streams reach the :class:`Tracker`:

- round metrics: each result's ``FLModel.metrics`` (once per site and round) plus the per-key mean over the
  sites ("global"); these also drive best-model selection and early stopping;
- step records: what scripts log with ``flare.log`` or the NVFlare-style writers of
  :mod:`hpcflare.client.tracking` (``SummaryWriter.add_scalar``, ``MLflowWriter.log_metric``, ...), each with
  its site, round and step, sent on their own ``Track`` RPC (see :mod:`hpcflare.runtime.site.track_records`).

Receivers (job option ``tracking``), files under ``<job_dir>/tracking/``:

    csv          metrics.csv (round, site, key, value, time); steps.csv (site, round, step, key, value, ...)
    tensorboard  tensorboard/<site>/ one run per site (+ ``global``): ``tensorboard --logdir .../tensorboard``
    mlflow       one MLflow run per site (+ ``global``) in experiment <job name>; default store
                 sqlite:///<job_dir>/tracking/mlflow.db (``tracking_config: {mlflow: {tracking_uri: ...}}``)
    wandb        one W&B run per site, offline by default (compute nodes rarely reach the internet):
                 ``wandb sync tracking/wandb/wandb/offline-run-*`` uploads them later
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.job import TRACKING_BACKENDS as BACKENDS
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.tracking_receivers import (
    CsvReceiver,
    MlflowReceiver,
    Receiver,
    TensorBoardReceiver,
    WandbReceiver,
    numeric,
    parse_record,
)
from hpcflare.settings import Settings
from hpcflare.transport.codec import pack_meta

RECEIVERS: dict[str, Callable[[Path, str, dict[str, Any]], Receiver]] = {
    "csv": CsvReceiver,
    "tensorboard": TensorBoardReceiver,
    "mlflow": MlflowReceiver,
    "wandb": WandbReceiver,
}


class TrackingQuota:
    """What a host (server or relay) takes of each site's tracking records, whatever the site's client library
    does: settings.tracking_max_records_per_round records and tracking_max_bytes_per_round bytes per site and
    round, tracking_max_job_bytes over the whole job. A record counts against the round it names when that is
    the host's current or previous round (records without a round share one budget per site, as in the client
    library); any other claim counts against the current round, so made-up rounds buy no extra room. The rest
    is dropped, with one warning per site and round (and one for the job's budget)."""

    ROUNDS_KEPT = 4
    """Rounds per site whose counts are kept (records of a round trail its result by a flush at most)."""

    def __init__(self, settings: Settings, log: RankLogger) -> None:
        self.settings, self.log = settings, log
        self._lock = threading.Lock()
        self._used: dict[str, dict[int | None, list[int]]] = {}  # site -> round -> [records, bytes]
        self._job_bytes = 0
        self._warned: set[tuple[str, int | None]] = set()
        self._job_warned = False

    @staticmethod
    def _round_of(record: Any, current: int) -> int | None:
        claimed = record.get("round") if isinstance(record, dict) else current
        if claimed is None or (
            isinstance(claimed, int) and not isinstance(claimed, bool) and 0 <= current - claimed <= 1
        ):
            return claimed
        return current

    def admit(self, site: str, records: list[Any], round_number: int) -> list[Any]:
        """The records to keep, in order; a site's records past its round's caps (or the job's) are dropped."""
        s = self.settings
        kept: list[Any] = []
        full: dict[int | None, str] = {}
        with self._lock:
            rounds = self._used.setdefault(site, {})
            for record in records:
                key = self._round_of(record, round_number)
                size = len(pack_meta(record))
                used = rounds.setdefault(key, [0, 0])
                if (
                    used[0] >= s.tracking_max_records_per_round
                    or used[1] + size > s.tracking_max_bytes_per_round
                ):
                    full.setdefault(key, "site")
                    continue
                if self._job_bytes + size > s.tracking_max_job_bytes:
                    full.setdefault(key, "job")
                    continue
                used[0] += 1
                used[1] += size
                self._job_bytes += size
                kept.append(record)
            for old in sorted(k for k in rounds if k is not None)[: -self.ROUNDS_KEPT]:
                del rounds[old]
            warn_sites = [k for k, why in full.items() if why == "site" and (site, k) not in self._warned]
            self._warned.update((site, k) for k in warn_sites)
            warn_job = "job" in full.values() and not self._job_warned
            self._job_warned = self._job_warned or warn_job
        if warn_job:
            self.log.warning(
                "tracking_budget_spent",
                f"the job's tracking records reached settings.tracking_max_job_bytes={s.tracking_max_job_bytes}; "
                "records from every site are dropped from now on (log less, or raise the setting)",
                limit=s.tracking_max_job_bytes,
            )
        for key in warn_sites:
            self.log.warning(
                "tracking_dropped",
                f"{site}: round {key}: more tracking records than settings.tracking_max_records_per_round="
                f"{s.tracking_max_records_per_round} / tracking_max_bytes_per_round={s.tracking_max_bytes_per_round}; "
                "the rest of this round's are dropped (the site logs too much, or bypasses hpcflare.client)",
                site=site,
                round=key,
                dropped=len(records) - len(kept),
            )
        return kept


def round_means(
    per_site: dict[str, dict[str, Any]], weights: dict[str, float] | None = None
) -> dict[str, float]:
    """The per-key mean of a round's metrics over the sites that reported each key, weighted by their results'
    weights (NUM_STEPS_CURRENT_ROUND, as NVFlare weighs metrics; a plain mean if all are 0)."""
    sums: dict[str, list[tuple[float, float]]] = {}
    for site, metrics in sorted(per_site.items()):
        for key, value in numeric(metrics).items():
            sums.setdefault(key, []).append((value, (weights or {}).get(site, 1.0)))
    return {k: _weighted_mean(v) for k, v in sums.items()}


def _weighted_mean(pairs: list[tuple[float, float]]) -> float:
    total = sum(w for _, w in pairs)
    if total <= 0:
        return sum(v for v, _ in pairs) / len(pairs)
    return sum(v * w for v, w in pairs) / total


class Tracker:
    def __init__(
        self,
        root: Path,
        backends: list[str],
        job: str = "hpcflare",
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ConfigError(f"tracking backends must be among {BACKENDS}, got {sorted(unknown)}")
        self.root = root
        self._lock = threading.Lock()
        if backends:
            root.mkdir(parents=True, exist_ok=True)
        self.receivers: list[Receiver] = [
            RECEIVERS[name](root, job, dict((options or {}).get(name) or {}))
            for name in BACKENDS
            if name in backends
        ]

    def record_round(self, number: int, per_site: dict[str, dict[str, Any]], means: dict[str, float]) -> None:
        """Write one round's metrics per site and their means (:func:`round_means`, as ``global``)."""
        now = time.time()
        with self._lock:
            for site, metrics in sorted(per_site.items()):
                for key, value in numeric(metrics).items():
                    for receiver in self.receivers:
                        receiver.round_metric(number, site, key, value, now)
            for key, value in means.items():
                for receiver in self.receivers:
                    receiver.round_metric(number, "global", key, value, now)
            for receiver in self.receivers:
                receiver.flush()

    def record_steps(self, site: str, raw: list[Any]) -> int:
        """Write a batch of a site's step records; returns how many were malformed (skipped)."""
        records = [r for r in (parse_record(site, item) for item in raw) if r is not None]
        with self._lock:
            for receiver in self.receivers:
                receiver.records(site, records)
                receiver.flush()
        return len(raw) - len(records)

    def close(self) -> None:
        with self._lock:
            for receiver in self.receivers:
                receiver.close()
            self.receivers = []
