"""Aggregation strategies: each supplies only configure/aggregate hooks, one algorithm per file."""

from hpcflare.plugins import STRATEGIES
from hpcflare.strategy.api import Aggregator, ClientUpdate, RoundPlan, Strategy, TaskKind, UpdateKind
from hpcflare.strategy.cross_site import CrossSiteEval
from hpcflare.strategy.cyclic import Cyclic
from hpcflare.strategy.fedavg import FedAvg
from hpcflare.strategy.fedeval import FedEval
from hpcflare.strategy.fedmedian import FedMedian
from hpcflare.strategy.fedopt import FedOpt
from hpcflare.strategy.fedstats import FedStats
from hpcflare.strategy.flower_app import FlowerApp
from hpcflare.strategy.kmeans import KMeans
from hpcflare.strategy.psi import PSI
from hpcflare.strategy.scaffold import Scaffold
from hpcflare.strategy.spec_stats import SpecStats
from hpcflare.strategy.splitnn import SplitNN
from hpcflare.strategy.swarm import Swarm
from hpcflare.strategy.xgb_bagging import XGBBagging
from hpcflare.strategy.xgb_histogram import XGBHistogram

for _name, _cls in {
    "fedavg": FedAvg,
    "fedmedian": FedMedian,
    "fedopt": FedOpt,
    "scaffold": Scaffold,
    "cyclic": Cyclic,
    "fedeval": FedEval,
    "cross_site_eval": CrossSiteEval,
    "fedstats": FedStats,
    "spec_stats": SpecStats,
    "swarm": Swarm,
    "kmeans": KMeans,
    "xgb_bagging": XGBBagging,
    "xgb_histogram": XGBHistogram,
    "psi": PSI,
    "splitnn": SplitNN,
    "flower": FlowerApp,
}.items():
    STRATEGIES.register(_name, _cls)

__all__ = [
    "Aggregator",
    "ClientUpdate",
    "CrossSiteEval",
    "Cyclic",
    "FedEval",
    "RoundPlan",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedStats",
    "SpecStats",
    "FlowerApp",
    "KMeans",
    "PSI",
    "Scaffold",
    "SplitNN",
    "STRATEGIES",
    "Swarm",
    "Strategy",
    "XGBBagging",
    "XGBHistogram",
    "TaskKind",
    "UpdateKind",
]
