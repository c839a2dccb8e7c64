"""Aggregation strategies: each supplies only configure/aggregate hooks, one algorithm per file."""

from hpcflare.strategy.api import Aggregator, ClientUpdate, Strategy
from hpcflare.strategy.fedavg import FedAvg
from hpcflare.strategy.fedmedian import FedMedian
from hpcflare.strategy.fedopt import FedOpt
from hpcflare.strategy.scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedmedian": FedMedian, "fedopt": FedOpt, "scaffold": Scaffold}

__all__ = ["Aggregator", "ClientUpdate", "FedAvg", "FedMedian", "FedOpt", "Scaffold", "STRATEGIES", "Strategy"]
