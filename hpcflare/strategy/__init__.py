"""Aggregation strategies: each supplies only configure/aggregate hooks, one algorithm per file."""

from hpcflare.strategy.api import Aggregator, ClientUpdate, Strategy
from hpcflare.strategy.fedavg import FedAvg
from hpcflare.strategy.fedmedian import FedMedian

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedmedian": FedMedian}

__all__ = ["Aggregator", "ClientUpdate", "FedAvg", "FedMedian", "STRATEGIES", "Strategy"]
