"""Federated statistics through NVFlare's ``Statistics`` spec, site side: the spec's types, ``FLContext`` (the
site's name), ``DFStatisticsCore`` (pandas DataFrames), and :func:`run_generator`, the loop that answers the
server's two statistics tasks with what the generator computes (never a raw value).

A site runs ``run_generator(MyStatistics(...))``: ``hpcflare nvflare job.py`` writes that script for NVFlare's
``FedStatsRecipe(stats_generator=...)``. Round 1: per dataset and numeric feature, count, failure count, sum,
the local stddev and, for histograms without a configured range, min and max. Round 2, with the global count
and mean and each histogram's range: ``variance_with_mean`` and the histogram. A feature with fewer than
``min_count`` values at a site is not sent at all. Results travel as JSON in a uint8 tensor (``stats.json``).
"""

from __future__ import annotations

import enum
import json
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import numpy as np

from hpcflare.client import api as flare
from hpcflare.client.model import FLModel
from hpcflare.strategy.spec_stats import STATS_KEY, percent_key

NUMERIC_TYPES = ("INT", "FLOAT")
SKETCH_POINTS = 101
"""A site's quantile sketch: its values at every whole percent, 0 to 100 (NVFlare sends a t-digest instead)."""


class DataType(enum.IntEnum):
    INT = 0
    FLOAT = 1
    STRING = 2
    BYTES = 3
    STRUCT = 4
    DATETIME = 5


class BinRange(NamedTuple):
    min_value: float
    max_value: float


class Bin(NamedTuple):
    low_value: float
    high_value: float
    sample_count: float


class HistogramType(enum.IntEnum):
    STANDARD = 0
    QUANTILES = 1


class Histogram(NamedTuple):
    hist_type: HistogramType
    bins: list[Bin]
    hist_name: str | None = None


class Feature(NamedTuple):
    feature_name: str
    data_type: DataType


class StatisticConfig(NamedTuple):
    name: str
    config: dict[str, Any]


class FLContext:
    """What a statistics generator asks of NVFlare's FLContext: the site's name, the job's id, properties."""

    def __init__(self, site: str, job_id: str = "") -> None:
        self._site, self._job_id = site, job_id
        self._props: dict[str, Any] = {}

    def get_identity_name(self, default: str = "") -> str:
        return self._site or default

    def get_job_id(self) -> str:
        return self._job_id

    def get_prop(self, key: str, default: Any = None) -> Any:
        return self._props.get(key, default)

    def set_prop(self, key: str, value: Any, private: bool = True, sticky: bool = True) -> bool:
        self._props[key] = value
        return True


class Statistics(ABC):
    """NVFlare's Statistics spec: ``features()`` and ``count()`` are required, the other statistics only when
    the job asks for them (NotImplementedError otherwise)."""

    def _logger(self) -> logging.Logger:
        return logging.getLogger(type(self).__name__)

    def log_info(self, fl_ctx: Any, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().info(msg)

    def log_warning(self, fl_ctx: Any, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().warning(msg)

    def log_error(self, fl_ctx: Any, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().error(msg)

    def log_debug(self, fl_ctx: Any, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().debug(msg)

    def initialize(self, fl_ctx: FLContext) -> None:
        pass

    def pre_run(self, statistics: list[str], num_of_bins: Any, bin_ranges: Any) -> dict[str, Any]:
        return {}

    @abstractmethod
    def features(self) -> dict[str, list[Feature]]: ...

    @abstractmethod
    def count(self, dataset_name: str, feature_name: str) -> int: ...

    def sum(self, dataset_name: str, feature_name: str) -> float:
        raise NotImplementedError

    def mean(self, dataset_name: str, feature_name: str) -> float:
        raise NotImplementedError

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        raise NotImplementedError

    def variance_with_mean(
        self, dataset_name: str, feature_name: str, global_mean: float, global_count: float
    ) -> float:
        raise NotImplementedError

    def histogram(
        self,
        dataset_name: str,
        feature_name: str,
        num_of_bins: int,
        global_min_value: float,
        global_max_value: float,
    ) -> Histogram:
        raise NotImplementedError

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        raise NotImplementedError

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        raise NotImplementedError

    def failure_count(self, dataset_name: str, feature_name: str) -> int:
        return 0

    def quantiles(self, dataset_name: str, feature_name: str, percents: list[float]) -> dict[str, Any]:
        """This site's values at ``percents`` ({percent: value}); with ``"sketch"``, also its values at every
        whole percent (0..100), from which the server merges the global quantiles."""
        raise NotImplementedError

    def finalize(self, fl_ctx: FLContext) -> None:
        pass


class DFStatisticsCore(Statistics):
    """NVFlare's DFStatisticsCore: statistics over ``self.data`` ({dataset: pandas DataFrame}), which a subclass
    loads in ``initialize``. Numeric columns are features; missing values count as failures."""

    def __init__(self) -> None:
        self.data: dict[str, Any] | None = None

    def _column(self, dataset: str, feature: str) -> Any:
        if not self.data or dataset not in self.data:
            raise ValueError(f"no dataset {dataset!r}: initialize() must load self.data")
        return self.data[dataset][feature]

    def features(self) -> dict[str, list[Feature]]:
        out: dict[str, list[Feature]] = {}
        for name, frame in (self.data or {}).items():
            out[name] = []
            for column in frame.columns:
                kind = frame[column].dtype.kind
                data_type = (
                    DataType.INT if kind in "iub" else DataType.FLOAT if kind == "f" else DataType.STRING
                )
                out[name].append(Feature(str(column), data_type))
        return out

    def count(self, dataset_name: str, feature_name: str) -> int:
        return int(self._column(dataset_name, feature_name).count())

    def failure_count(self, dataset_name: str, feature_name: str) -> int:
        return int(self._column(dataset_name, feature_name).isnull().sum())

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).sum())

    def mean(self, dataset_name: str, feature_name: str) -> float:
        return self.sum(dataset_name, feature_name) / max(1, self.count(dataset_name, feature_name))

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).std())

    def variance_with_mean(
        self, dataset_name: str, feature_name: str, global_mean: float, global_count: float
    ) -> float:
        values = self._column(dataset_name, feature_name).dropna()
        return float(((values - global_mean) ** 2).sum() / max(1.0, global_count - 1))

    def histogram(
        self,
        dataset_name: str,
        feature_name: str,
        num_of_bins: int,
        global_min_value: float,
        global_max_value: float,
    ) -> Histogram:
        values = self._column(dataset_name, feature_name).dropna().to_numpy(dtype=np.float64)
        counts, edges = np.histogram(values, bins=num_of_bins, range=(global_min_value, global_max_value))
        bins = [Bin(float(edges[i]), float(edges[i + 1]), float(counts[i])) for i in range(num_of_bins)]
        return Histogram(HistogramType.STANDARD, bins)

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).max())

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).min())

    def quantiles(self, dataset_name: str, feature_name: str, percents: list[float]) -> dict[str, Any]:
        values = self._column(dataset_name, feature_name).dropna().to_numpy(dtype=np.float64)
        wanted = np.quantile(values, np.asarray(percents, dtype=np.float64) / 100.0)
        return {
            **{percent_key(p): float(v) for p, v in zip(percents, wanted)},
            "sketch": [float(v) for v in np.quantile(values, np.linspace(0.0, 1.0, SKETCH_POINTS))],
        }


def _numeric_features(generator: Statistics) -> list[tuple[str, str]]:
    out = []
    for dataset, features in generator.features().items():
        for feature in features:
            kind = (
                DataType(feature.data_type).name
                if isinstance(feature.data_type, int)
                else str(feature.data_type)
            )
            if kind in NUMERIC_TYPES:
                out.append((str(dataset), str(feature.feature_name)))
    return out


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def local_summary(generator: Statistics, meta: dict[str, Any]) -> dict[str, Any]:
    """Round 1: per dataset and numeric feature, the counts and sums the job asks for (nothing for a feature
    with fewer than min_count values here)."""
    wanted, floor = set(meta.get("statistics") or []), int(meta.get("min_count", 1))
    ranged = set(meta.get("ranged") or [])  # histogram features whose range the job gives
    out: dict[str, Any] = {}
    for dataset, feature in _numeric_features(generator):
        count = int(generator.count(dataset, feature))
        if count < floor:
            continue
        entry: dict[str, Any] = {
            "count": count,
            "failure_count": int(generator.failure_count(dataset, feature)),
        }
        if wanted & {"sum", "mean", "stddev"}:
            entry["sum"] = _finite(generator.sum(dataset, feature))
        if "stddev" in wanted:
            try:
                entry["stddev"] = _finite(generator.stddev(dataset, feature))
            except NotImplementedError:
                pass
        if "histogram" in wanted and feature not in ranged:
            entry["min"] = _finite(generator.min_value(dataset, feature))
            entry["max"] = _finite(generator.max_value(dataset, feature))
        percents = (meta.get("quantiles") or {}).get(feature, (meta.get("quantiles") or {}).get("*"))
        if "quantile" in wanted and percents:
            try:
                found = generator.quantiles(dataset, feature, [float(p) for p in percents])
            except NotImplementedError:
                found = {}
            sketch = found.pop("sketch", None) if isinstance(found, dict) else None
            entry["quantiles"] = {percent_key(k): _finite(v) for k, v in (found or {}).items()}
            if sketch is not None:
                entry["sketch"] = [float(v) for v in sketch]
        out.setdefault(dataset, {})[feature] = entry
    return out


def global_pass(generator: Statistics, meta: dict[str, Any]) -> dict[str, Any]:
    """Round 2: with the global count and mean, the variance term; with the global range, the histogram."""
    wanted = set(meta.get("statistics") or [])
    out: dict[str, Any] = {}
    for dataset, features in (meta.get("global") or {}).items():
        for feature, known in features.items():
            entry: dict[str, Any] = {}
            if "stddev" in wanted and known.get("mean") is not None:
                entry["var"] = _finite(
                    generator.variance_with_mean(
                        dataset, feature, float(known["mean"]), float(known["count"])
                    )
                )
            if "histogram" in wanted and known.get("range") is not None:
                lo, hi = known["range"]
                histogram = generator.histogram(dataset, feature, int(known["bins"]), float(lo), float(hi))
                entry["histogram"] = [
                    [float(b.low_value), float(b.high_value), float(b.sample_count)] for b in histogram.bins
                ]
            out.setdefault(dataset, {})[feature] = entry
    return out


def encode(payload: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(payload, allow_nan=False).encode(), dtype=np.uint8).copy()


def run_generator(generator: Statistics) -> None:
    """A site's whole part in a federated statistics job: initialize the generator, answer both rounds."""
    flare.init()
    context = FLContext(flare.get_site_name(), flare.get_job_id())
    generator.initialize(context)
    try:
        while flare.is_running():
            task = flare.receive()
            meta = dict(task.meta or {})
            phase = int(meta.get("stats_phase", 1))
            payload = local_summary(generator, meta) if phase == 1 else global_pass(generator, meta)
            flare.send(FLModel(params={STATS_KEY: encode(payload)}))
    finally:
        generator.finalize(context)


__all__ = [
    "Bin",
    "BinRange",
    "DFStatisticsCore",
    "DataType",
    "FLContext",
    "Feature",
    "Histogram",
    "HistogramType",
    "StatisticConfig",
    "Statistics",
    "run_generator",
]
