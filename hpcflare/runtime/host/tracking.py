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
from hpcflare.runtime.host.tracking_receivers import (
    CsvReceiver,
    MlflowReceiver,
    Receiver,
    TensorBoardReceiver,
    WandbReceiver,
    numeric,
    parse_record,
)

RECEIVERS: dict[str, Callable[[Path, str, dict[str, Any]], Receiver]] = {
    "csv": CsvReceiver,
    "tensorboard": TensorBoardReceiver,
    "mlflow": MlflowReceiver,
    "wandb": WandbReceiver,
}


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

    def record_round(
        self, number: int, per_site: dict[str, dict[str, Any]], weights: dict[str, float] | None = None
    ) -> dict[str, float]:
        """Write one round's metrics; returns the per-key mean over the sites that reported it, weighted by
        their results' weights (NUM_STEPS_CURRENT_ROUND, as NVFlare weighs metrics; plain mean if all are 0)."""
        now = time.time()
        sums: dict[str, list[tuple[float, float]]] = {}
        with self._lock:
            for site, metrics in sorted(per_site.items()):
                for key, value in numeric(metrics).items():
                    sums.setdefault(key, []).append((value, (weights or {}).get(site, 1.0)))
                    for receiver in self.receivers:
                        receiver.round_metric(number, site, key, value, now)
            means = {k: _weighted_mean(v) for k, v in sums.items()}
            for key, value in means.items():
                for receiver in self.receivers:
                    receiver.round_metric(number, "global", key, value, now)
            for receiver in self.receivers:
                receiver.flush()
        return means

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
