"""FedAvg: weighted mean of client updates, accumulated in-time as each result arrives.

Weights come from meta NUM_STEPS_CURRENT_ROUND (NVFlare's convention), default 1. The math (FULL/DIFF mixing,
per-tensor weights, relay partial sums) is hpcflare.strategy.aggregate's WeightedMeanAggregator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, Strategy


class FedAvg(Strategy):
    """``aggregation_weights``: a per-site factor on each result's weight (NVFlare's FedAvg option of the same
    name): weight = factor x NUM_STEPS_CURRENT_ROUND; sites not named get 1. ``fedprox_mu``: FedProx's
    proximal coefficient, sent to the sites in every task's meta (NVFlare's FedProxRecipe); the sites' scripts
    add the term (``hpcflare.client.fedprox``)."""

    name = "fedavg"

    def __init__(
        self, aggregation_weights: Mapping[str, float] | None = None, fedprox_mu: float | None = None
    ) -> None:
        if fedprox_mu is not None and (
            isinstance(fedprox_mu, bool)
            or not isinstance(fedprox_mu, (int, float))
            or not 0 < fedprox_mu < float("inf")
        ):
            raise TypeError(f"fedprox_mu must be a finite number > 0, got {fedprox_mu!r}")
        self.fedprox_mu = None if fedprox_mu is None else float(fedprox_mu)
        weights = dict(aggregation_weights or {})
        for site, factor in weights.items():
            if (
                isinstance(factor, bool)
                or not isinstance(factor, (int, float))
                or not 0 <= factor < float("inf")
            ):
                raise TypeError(f"aggregation_weights[{site!r}] must be a finite number >= 0, got {factor!r}")
        self.aggregation_weights = {str(k): float(v) for k, v in weights.items()}

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        return {} if self.fedprox_mu is None else {"fedprox_mu": self.fedprox_mu}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params, self.aggregation_weights)
