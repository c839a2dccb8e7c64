"""Aggregation strategies: each supplies only configure/aggregate hooks, one algorithm per file."""

from hpcflare.strategy.api import Aggregator, ClientUpdate, Strategy
from hpcflare.strategy.fedavg import FedAvg

__all__ = ["Aggregator", "ClientUpdate", "FedAvg", "Strategy"]
