"""FedEval: evaluate one given model at every site; the global model does not change.

Every round is a 'validate' task (flare.is_evaluate() is True); each site returns metrics only. The
per-site results land in the round log, tracking/metrics.csv, and ``models/evaluation.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.fileio import atomic_write_json
from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, RoundPlan, Strategy, TaskKind


class FedEval(Strategy):
    name = "fedeval"

    def __init__(self) -> None:
        self.output: Path | None = None
        self.results: dict[str, dict[str, Any]] = {}

    def attach(self, job_root: Path) -> None:
        self.output = job_root / "models" / "evaluation.json"

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        return RoundPlan(task=TaskKind.VALIDATE)

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        self.results = {site: dict(m) for site, m in results.items()}
        if self.output is not None:
            atomic_write_json(
                self.output, {"round": round_num, "results": self.results}, indent=1, default=str
            )

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params)  # metrics-only results: nothing is folded
