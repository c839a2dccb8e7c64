"""FedEval: evaluate one given model at every site; the global model does not change.

Every round is a 'validate' task (flare.is_evaluate() is True); each site returns metrics only. The
per-site results land in the round log, tracking/metrics.csv, and ``models/evaluation.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hpcflare.strategy.api import Aggregator, RoundPlan, Strategy
from hpcflare.strategy.fedavg import WeightedMeanAggregator


class FedEval(Strategy):
    name = "fedeval"

    def __init__(self) -> None:
        self.output: Path | None = None
        self.results: dict[str, dict[str, Any]] = {}

    def attach(self, job_root: Path) -> None:
        self.output = job_root / "models" / "evaluation.json"

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        return RoundPlan(task="validate")

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        self.results = {site: dict(m) for site, m in results.items()}
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.write_text(json.dumps({"round": round_num, "results": self.results}, indent=1, default=str))

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params)  # metrics-only results: nothing is folded
