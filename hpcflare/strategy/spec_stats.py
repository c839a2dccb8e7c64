"""Federated statistics through NVFlare's ``Statistics`` spec (``FedStatsRecipe(stats_generator=...)``).

Round 1: every site sends, per dataset and numeric feature, count, failure count, sum, its local stddev and
(for histograms without a configured range) min and max. The server adds them up. Round 2: the server sends
the global count and mean and each histogram's range; sites send ``variance_with_mean`` and their histogram.
The result, in NVFlare's layout ({feature: {statistic: {site | "Global": {dataset: value}}}}, histograms as
[[low, high, count], ...], 4 decimals), is written to ``output_path`` in the job directory. A feature whose
global count is below ``min_count`` gets no Global entry (sites already withhold features below it).
Uploads are JSON in a uint8 tensor, parsed strictly (numbers only, known names, bounded size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError, UpdateRejectedError
from hpcflare.fileio import atomic_write_json
from hpcflare.strategy.api import (
    Aggregator,
    AnyLength,
    ClientUpdate,
    PassThroughAggregator,
    RoundPlan,
    Strategy,
    TaskKind,
)

STATS_KEY = "stats.json"
"""The tensor a site's statistics travel in (JSON, UTF-8, as uint8)."""
STATISTICS = ("count", "sum", "mean", "stddev", "histogram", "quantile")
GLOBAL = "Global"
DEFAULT_BINS = 10
MAX_NAMES = 10_000
"""Datasets x features one site may report."""


class SpecStats(Strategy):
    name = "spec_stats"
    supports_relays = False

    def __init__(
        self,
        statistic_configs: dict[str, Any],
        output_path: str = "statistics/statistics.json",
        min_count: int = 10,
        max_bytes: int = 16 << 20,
        precision: int = 4,
    ) -> None:
        if not isinstance(statistic_configs, dict) or not statistic_configs:
            raise ConfigError(
                "statistic_configs must name the statistics to compute, e.g. {'count': {}, 'mean': {}}"
            )
        unknown = sorted(set(statistic_configs) - set(STATISTICS))
        if unknown:
            raise ConfigError(f"statistic_configs: unknown statistic(s) {unknown}; known: {list(STATISTICS)}")
        path = Path(str(output_path))
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ConfigError(
                f"stats_output_path {output_path!r} must be a relative path inside the job folder"
            )
        self.configs, self.output_path = dict(statistic_configs), path
        self.percents = _percents(self.configs)  # a bad quantile section is refused at start
        self.min_count, self.max_bytes, self.precision = int(min_count), int(max_bytes), int(precision)
        self.local: dict[str, dict[str, Any]] = {}  # site -> round 1's summary
        self.second: dict[str, dict[str, Any]] = {}  # site -> round 2's terms
        self.totals: dict[str, dict[str, dict[str, float]]] = {}  # dataset -> feature -> count/sum/min/max
        self.output: Path | None = None
        self._phase = 1

    def attach(self, job_root: Path) -> None:
        self.output = job_root / self.output_path

    def initial_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {STATS_KEY: np.zeros(1, np.uint8)}

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        return {STATS_KEY: AnyLength(np.dtype(np.uint8), self.max_bytes)}

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        self._phase = round_num
        return RoundPlan(task=TaskKind.STATISTICS, skip=round_num > 2)

    def _histogram(self, feature: str) -> dict[str, Any]:
        config = self.configs.get("histogram") or {}
        return dict(config.get(feature) or config.get("*") or {})

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "stats_phase": self._phase,
            "statistics": list(self.configs),
            "min_count": self.min_count,
            "quantiles": self.percents,
            "ranged": [
                f
                for f in (self.configs.get("histogram") or {})
                if f != "*" and self._histogram(f).get("range")
            ],
        }
        if self._phase == 2:
            meta["global"] = {
                dataset: {
                    feature: {
                        "count": t["count"],
                        "mean": t["sum"] / t["count"] if "sum" in t else None,
                        "bins": int(self._histogram(feature).get("bins", DEFAULT_BINS)),
                        "range": self._range(feature, t),
                    }
                    for feature, t in features.items()
                }
                for dataset, features in self.totals.items()
            }
        return meta

    def _range(self, feature: str, totals: dict[str, float]) -> list[float] | None:
        if "histogram" not in self.configs:
            return None
        given = self._histogram(feature).get("range")
        if given is not None:
            return [float(given[0]), float(given[1])]
        if "min" not in totals:
            return None
        lo, hi = totals["min"], totals["max"]
        return [lo, hi if hi > lo else lo + 1.0]

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _Collect(global_params, self)

    def take(self, site: str, payload: Any) -> None:
        """Check one site's upload (numbers only, bounded) and keep it for this round."""
        if (
            not isinstance(payload, dict)
            or sum(len(v) for v in payload.values() if isinstance(v, dict)) > MAX_NAMES
        ):
            raise UpdateRejectedError(f"{site}'s statistics are not a mapping of datasets to features")
        for dataset, features in payload.items():
            if not isinstance(features, dict):
                raise UpdateRejectedError(f"{site}'s statistics for {dataset!r:.40} are not a mapping")
            for feature, entry in features.items():
                if not isinstance(entry, dict) or not all(_valid(k, v) for k, v in entry.items()):
                    raise UpdateRejectedError(
                        f"{site}'s statistics for {dataset}/{feature:.40} hold non-numbers"
                    )
        (self.local if self._phase == 1 else self.second)[site] = payload

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        if round_num == 1:
            for payload in self.local.values():
                for dataset, features in payload.items():
                    for feature, entry in features.items():
                        t = self.totals.setdefault(dataset, {}).setdefault(feature, {"count": 0.0})
                        t["count"] += float(entry.get("count", 0))
                        if entry.get("sum") is not None:
                            t["sum"] = t.get("sum", 0.0) + float(entry["sum"])
                        if entry.get("min") is not None:
                            t["min"] = min(t.get("min", math.inf), float(entry["min"]))
                            t["max"] = max(t.get("max", -math.inf), float(entry["max"]))
        if self.output is not None:
            atomic_write_json(self.output, self.report(), indent=1)

    def report(self) -> dict[str, Any]:
        """NVFlare's layout: {feature: {statistic: {site | Global: {dataset: value}}}}."""
        out: dict[str, Any] = {}
        r = self.precision

        def put(feature: str, stat: str, who: str, dataset: str, value: Any) -> None:
            if stat in self.configs and value is not None:
                out.setdefault(feature, {}).setdefault(stat, {}).setdefault(who, {})[dataset] = value

        for site, payload in sorted(self.local.items()):
            for dataset, features in payload.items():
                for feature, e in features.items():
                    count = e.get("count", 0)
                    put(feature, "count", site, dataset, int(count))
                    put(feature, "sum", site, dataset, _round(e.get("sum"), r))
                    put(
                        feature,
                        "mean",
                        site,
                        dataset,
                        _round(e["sum"] / count, r) if count and e.get("sum") is not None else None,
                    )
                    put(feature, "stddev", site, dataset, _round(e.get("stddev"), r))
                    put(feature, "quantile", site, dataset, _quantiles(e.get("quantiles"), r))
                    hist = (
                        ((self.second.get(site) or {}).get(dataset) or {}).get(feature, {}).get("histogram")
                    )
                    put(feature, "histogram", site, dataset, _bins(hist, r))
        for dataset, features in self.totals.items():
            for feature, t in features.items():
                n = t["count"]
                if n < self.min_count:
                    continue
                put(feature, "count", GLOBAL, dataset, int(n))
                put(feature, "sum", GLOBAL, dataset, _round(t.get("sum"), r))
                put(feature, "mean", GLOBAL, dataset, _round(t["sum"] / n, r) if "sum" in t else None)
                entries = [  # round 2's terms of the sites that reported the feature in round 1
                    ((self.second.get(site) or {}).get(dataset) or {}).get(feature) or {}
                    for site, payload in self.local.items()
                    if feature in (payload.get(dataset) or {})
                ]
                terms: list[float] = [float(e["var"]) for e in entries if e.get("var") is not None]
                if entries and len(terms) == len(entries):  # every site that has the feature gave its term
                    put(feature, "stddev", GLOBAL, dataset, _round(math.sqrt(max(0.0, sum(terms))), r))
                sketches = [
                    (float(payload[dataset][feature]["count"]), payload[dataset][feature].get("sketch"))
                    for payload in self.local.values()
                    if feature in (payload.get(dataset) or {})
                ]
                wanted = self.percents.get(feature, self.percents.get("*"))
                if wanted and sketches and all(sketch for _, sketch in sketches):
                    merged_q = merge_quantiles([(n, list(sk or [])) for n, sk in sketches], wanted)
                    put(feature, "quantile", GLOBAL, dataset, _quantiles(merged_q, r))
                hists: list[list[list[float]]] = [e["histogram"] for e in entries if e.get("histogram")]
                if hists and len({len(h) for h in hists}) == 1:
                    merged = [[h0[0], h0[1], sum(h[i][2] for h in hists)] for i, h0 in enumerate(hists[0])]
                    put(feature, "histogram", GLOBAL, dataset, _bins(merged, r))
        return out


def _percents(configs: dict[str, Any]) -> dict[str, list[float]]:
    """statistic_configs' quantile section ({feature | "*": [percent, ...]}), checked."""
    out = {}
    for feature, percents in dict(configs.get("quantile") or {}).items():
        if not isinstance(percents, (list, tuple)) or not all(_number(p) and 0 <= p <= 100 for p in percents):
            raise ConfigError(f"statistic_configs quantile {feature!r}: give a list of percents in [0, 100]")
        out[str(feature)] = [float(p) for p in percents]
    return out


def percent_key(percent: Any) -> str:
    """A percent as a result key, as NVFlare writes them: 50 -> "50", 99.9 -> "99.9"."""
    number = float(percent)
    return str(int(number)) if number.is_integer() else str(number)


def merge_quantiles(sketches: list[tuple[float, list[float]]], percents: list[float]) -> dict[str, float]:
    """The global quantiles from the sites' sketches (count, values at evenly spaced fractions 0..1): each
    sketch is a piecewise-linear CDF, the global CDF their count-weighted mixture (piecewise linear on the
    union of the knots), inverted at each percent."""
    knots = np.unique(np.concatenate([np.asarray(sk, dtype=np.float64) for _, sk in sketches]))
    total = sum(n for n, _ in sketches)
    cdf = np.zeros_like(knots)
    for n, sketch in sketches:
        values = np.asarray(sketch, dtype=np.float64)
        cdf += n * np.interp(knots, values, np.linspace(0.0, 1.0, len(values)), left=0.0, right=1.0)
    cdf /= total
    cdf = np.maximum.accumulate(cdf)
    out = {}
    for p in percents:
        index = int(np.searchsorted(cdf, p / 100.0, side="left"))
        if index == 0:
            value = knots[0]
        elif index >= len(knots):
            value = knots[-1]
        else:  # linear between the two knots around the percent
            lo, hi = cdf[index - 1], cdf[index]
            t = 0.0 if hi <= lo else (p / 100.0 - lo) / (hi - lo)
            value = knots[index - 1] + t * (knots[index] - knots[index - 1])
        out[percent_key(p)] = float(value)
    return out


def _quantiles(found: Any, digits: int) -> Any:
    if not isinstance(found, dict):
        return None
    return {key: _round(value, digits) for key, value in found.items() if value is not None}


def _valid(key: Any, value: Any) -> bool:
    if key == "sketch":
        return (
            isinstance(value, list)
            and 2 <= len(value) <= 1001
            and all(_number(v) for v in value)
            and (all(a <= b for a, b in zip(value, value[1:])))
        )
    if key == "quantiles":
        return (
            isinstance(value, dict)
            and len(value) <= 1000
            and all(isinstance(k, str) and (v is None or _number(v)) for k, v in value.items())
        )
    if key == "histogram":
        return (
            isinstance(value, list)
            and len(value) <= 100_000
            and all(isinstance(b, list) and len(b) == 3 and all(_number(x) for x in b) for b in value)
        )
    return isinstance(key, str) and (value is None or _number(value))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _round(value: Any, digits: int) -> Any:
    if value is None:
        return None
    rounded = round(float(value), digits)
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


def _bins(hist: Any, digits: int) -> Any:
    if not hist:
        return None
    return [
        [round(float(lo), digits), round(float(hi), digits), _round(count, digits)] for lo, hi, count in hist
    ]


class _Collect(PassThroughAggregator):
    """Parses each site's statistics (the round's model is not changed)."""

    def __init__(self, global_params: Mapping[str, np.ndarray], strategy: SpecStats) -> None:
        super().__init__(global_params)
        self.strategy = strategy

    def add(self, update: ClientUpdate) -> None:
        raw = np.asarray(update.params.get(STATS_KEY), dtype=np.uint8).tobytes()
        try:
            payload = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            raise UpdateRejectedError(f"{update.site}'s statistics are not JSON") from None
        self.strategy.take(update.site, payload)
        self._count += 1
