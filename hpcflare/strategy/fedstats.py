"""Federated statistics: count, sum, mean, stddev, min/max, histogram and quantiles of named features,
without any site revealing raw values.

Round 1 ('statistics' task, phase 1): each site sends per feature count, sum, sum of squares, min, max.
Round 2 (phase 2): with the global [min, max] as bin range, each site sends a histogram. Sums add up; min
and max take the extremes. Guards: a site with fewer than ``min_count`` values of a feature sends nothing
for it (its min/max would be a raw value), sites add Gaussian noise of ``noise`` x (value range) to
sums and counts they send, and the server withholds a feature whose total count is below ``min_count``.
Quantiles are read off the global histogram (linear within a bin). Result: ``models/statistics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write_json
from hpcflare.strategy.api import (
    Aggregator,
    ClientUpdate,
    PassThroughAggregator,
    RoundPlan,
    Strategy,
    TaskKind,
)

FIELDS = ("count", "sum", "sumsq", "min", "max")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class FedStats(Strategy):
    name = "fedstats"
    supports_relays = False

    def __init__(self, features: list[str], bins: int = 20, min_count: int = 10, noise: float = 0.0) -> None:
        if not features or not all(isinstance(f, str) and f and "." not in f for f in features):
            raise ConfigError("fedstats needs 'features': a list of names without '.'")
        if not 2 <= int(bins) <= 10_000 or int(min_count) < 1 or float(noise) < 0:
            raise ConfigError("fedstats needs 2 <= bins <= 10000, min_count >= 1, noise >= 0")
        self.features, self.bins, self.min_count, self.noise = (
            list(features),
            int(bins),
            int(min_count),
            float(noise),
        )
        self.totals: dict[str, np.ndarray] = {}
        self.ranges: dict[str, list[float]] = {}
        self.output: Path | None = None
        self._phase = 1

    def attach(self, job_root: Path) -> None:
        self.output = job_root / "models" / "statistics.json"

    def initial_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The 'model' is the set of statistics tensors a site may send (what uploads are validated against)."""
        out = {f"{f}.{k}": np.zeros(1, np.float64) for f in self.features for k in FIELDS}
        out.update({f"{f}.hist": np.zeros(self.bins, np.float64) for f in self.features})
        return out

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        self._phase = 1 if round_num == 1 else 2
        return RoundPlan(task=TaskKind.STATISTICS, skip=round_num > 2)

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        return {
            "stats_phase": self._phase,
            "features": self.features,
            "bins": self.bins,
            "min_count": self.min_count,
            "noise": self.noise,
            "ranges": self.ranges,
        }

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _StatsAggregator(global_params, self)

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        if round_num == 1:
            for f in self.features:
                lo, hi = self.totals.get(f"{f}.min"), self.totals.get(f"{f}.max")
                if lo is not None and hi is not None and self._count(f) >= self.min_count:
                    self.ranges[f] = [float(lo[0]), float(hi[0]) if hi[0] > lo[0] else float(lo[0]) + 1.0]
        self._write(len(results))

    def _count(self, feature: str) -> float:
        count = self.totals.get(f"{feature}.count")
        return float(count[0]) if count is not None else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.features:
            n = self._count(f)
            if n < self.min_count:
                out[f] = {"withheld": f"total count {n:.0f} below min_count {self.min_count}"}
                continue
            total, sq = float(self.totals[f"{f}.sum"][0]), float(self.totals[f"{f}.sumsq"][0])
            mean = total / n
            var = max(0.0, sq / n - mean * mean) * n / max(1.0, n - 1)
            entry: dict[str, Any] = {
                "count": n,
                "sum": total,
                "mean": mean,
                "stddev": math.sqrt(var),
                "min": float(self.totals[f"{f}.min"][0]),
                "max": float(self.totals[f"{f}.max"][0]),
            }
            hist = self.totals.get(f"{f}.hist")
            if hist is not None and f in self.ranges and hist.sum() > 0:
                lo, hi = self.ranges[f]
                edges = np.linspace(float(lo), float(hi), self.bins + 1)
                entry["histogram"] = {"edges": edges.tolist(), "counts": hist.tolist()}
                entry["quantiles"] = {str(q): quantile(edges, hist, q) for q in QUANTILES}
            out[f] = entry
        return out

    def _write(self, sites: int) -> None:
        if self.output is not None:
            atomic_write_json(self.output, {"sites": sites, "statistics": self.summary()}, indent=1)


def quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    cum = np.cumsum(np.clip(counts, 0, None))
    if cum[-1] <= 0:
        return float("nan")
    target = q * cum[-1]
    i = int(np.searchsorted(cum, target))
    before = cum[i - 1] if i > 0 else 0.0
    inside = (target - before) / counts[i] if counts[i] > 0 else 0.0
    return float(edges[i] + inside * (edges[i + 1] - edges[i]))


class _StatsAggregator(PassThroughAggregator):
    """Adds each site's statistics into the strategy's totals (min/max take the extremes)."""

    def __init__(self, global_params: Mapping[str, np.ndarray], strategy: FedStats) -> None:
        super().__init__(global_params)
        self.strategy = strategy

    def add(self, update: ClientUpdate) -> None:
        totals = self.strategy.totals
        for name, value in update.params.items():
            value = np.asarray(value, dtype=np.float64)
            have = totals.get(name)
            if have is None:
                totals[name] = value.copy()
            elif name.endswith(".min"):
                np.minimum(have, value, out=have)
            elif name.endswith(".max"):
                np.maximum(have, value, out=have)
            else:
                have += value
        self._count += 1
