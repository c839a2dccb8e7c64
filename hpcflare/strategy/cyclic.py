"""Cyclic weight transfer: the model travels from site to site; each trains it and passes it on.

Round r goes to one site only, the ((r-1) mod n)-th of the live sites in job.yaml order, and its result
becomes the next global model (no averaging). A site that died is skipped: the next live one gets the
model. One pass over n sites is n rounds (CyclicRecipe sets num_rounds = passes x sites).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, RoundPlan, Strategy


class Cyclic(Strategy):
    name = "cyclic"
    supports_relays = False

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        if not live:
            return RoundPlan(targets=[])
        return RoundPlan(targets=[live[(round_num - 1) % len(live)]])

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params)  # one result: the mean is that result
