"""Experiment tracking on the server: every site's metrics per round, as CSV and TensorBoard event files.

Metrics come from ``FLModel.metrics`` and ``flare.log(...)`` scalars sent with each result (relays pass their
children's on). Files, under ``<job_dir>/tracking/``:

    metrics.csv                 round, site, key, value, time   (one row per site, metric and round)
    tensorboard/<site>/         one run per site, plus ``global`` for the mean over the sites of each round

``tensorboard --logdir jobs/<job-id>/tracking/tensorboard`` shows every site's curves side by side.
TensorBoard files need the ``tensorboard`` package (its writer only: no TensorFlow, no torch).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError

BACKENDS = ("csv", "tensorboard")


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    def __init__(self, root: Path, backends: list[str]) -> None:
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ConfigError(f"tracking backends must be among {BACKENDS}, got {sorted(unknown)}")
        self.root, self.backends = root, list(backends)
        self._writers: dict[str, Any] = {}
        self._csv: Any = None
        if backends:
            root.mkdir(parents=True, exist_ok=True)
        if "csv" in backends:
            path = root / "metrics.csv"
            new = not path.exists()
            self._csv = open(path, "a", newline="")  # appended: a resumed job continues the same file
            self._rows = csv.writer(self._csv)
            if new:
                self._rows.writerow(["round", "site", "key", "value", "time"])
        if "tensorboard" in backends:
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
            except ImportError:
                raise ConfigError("tracking: tensorboard needs the 'tensorboard' package (pip install tensorboard)") from None

    def record_round(self, number: int, per_site: dict[str, dict[str, Any]]) -> dict[str, float]:
        """Write one round's metrics; returns the per-key mean over the sites that reported it."""
        now = time.time()
        sums: dict[str, list[float]] = {}
        for site, metrics in sorted(per_site.items()):
            for key, value in numeric(metrics).items():
                sums.setdefault(key, []).append(value)
                self._write(number, site, key, value, now)
        means = {k: sum(v) / len(v) for k, v in sums.items()}
        for key, value in means.items():
            self._write(number, "global", key, value, now)
        if self._csv is not None:
            self._csv.flush()
        for writer in self._writers.values():
            writer.flush()
        return means

    def _write(self, number: int, site: str, key: str, value: float, now: float) -> None:
        if self._csv is not None:
            self._rows.writerow([number, site, key, repr(value), f"{now:.3f}"])
        if "tensorboard" in self.backends:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            writer = self._writers.get(site)
            if writer is None:
                writer = self._writers[site] = EventFileWriter(str(self.root / "tensorboard" / site))
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=key, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=now, step=number, summary=summary))

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
