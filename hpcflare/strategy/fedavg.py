"""FedAvg: weighted mean of client updates, accumulated in-time as each result arrives.

Weights come from meta NUM_STEPS_CURRENT_ROUND (NVFlare's convention), default 1. The math (FULL/DIFF mixing,
per-tensor weights, relay partial sums) is hpcflare.strategy.aggregate's WeightedMeanAggregator.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, Strategy


class FedAvg(Strategy):
    """``aggregation_weights``: a per-site factor on each result's weight (NVFlare's FedAvg option of the same
    name): weight = factor x NUM_STEPS_CURRENT_ROUND; sites not named get 1."""

    name = "fedavg"

    def __init__(self, aggregation_weights: Mapping[str, float] | None = None) -> None:
        weights = dict(aggregation_weights or {})
        for site, factor in weights.items():
            if (
                isinstance(factor, bool)
                or not isinstance(factor, (int, float))
                or not 0 <= factor < float("inf")
            ):
                raise TypeError(f"aggregation_weights[{site!r}] must be a finite number >= 0, got {factor!r}")
        self.aggregation_weights = {str(k): float(v) for k, v in weights.items()}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params, self.aggregation_weights)
