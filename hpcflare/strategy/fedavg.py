"""FedAvg: weighted mean of client updates, accumulated in-time as each result arrives.

Weights come from meta NUM_STEPS_CURRENT_ROUND (NVFlare's convention), default 1. The math (FULL/DIFF mixing,
per-tensor weights, relay partial sums) is hpcflare.strategy.aggregate's WeightedMeanAggregator.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params)
