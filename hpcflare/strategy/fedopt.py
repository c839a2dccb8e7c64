"""FedOpt (Reddi et al., "Adaptive Federated Optimization"): a server optimizer on the mean client update.

The weighted mean update of a round (exactly FedAvg's, so relays' partial sums still apply) is treated as a
negative pseudo-gradient ``g = -mean_delta`` and fed to a server-side optimizer:

- ``sgd``:  m = momentum * m + g;                 w = w - lr * m        (lr=1, momentum=0 is FedAvg)
- ``adam``: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;  w = w - lr * m / (sqrt(v) + tau)   (FedAdam)

Integer tensors (counters such as BatchNorm's num_batches_tracked) take the plain FedAvg value. The moments
are the strategy's state: saved with every checkpoint, restored when a requeued job resumes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, Params, Strategy
from hpcflare.transport.codec import is_float

OPTIMIZERS = ("sgd", "adam")


class FedOpt(Strategy):
    name = "fedopt"

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 1.0,
        momentum: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"fedopt optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr <= 0 or not 0 <= momentum < 1 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or tau <= 0:
            raise ConfigError("fedopt needs lr > 0, 0 <= momentum, beta1, beta2 < 1 and tau > 0")
        self.optimizer, self.lr, self.momentum = optimizer, float(lr), float(momentum)
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        self.m: Params = {}
        self.v: Params = {}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _FedOptAggregator(global_params, self)

    def step(self, name: str, base: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        grad = np.negative(mean_delta, out=mean_delta)  # in place: the round's sum buffer is ours to reuse
        m = self.m.get(name)
        if self.optimizer == "sgd":
            if self.momentum:
                m = self.m[name] = grad.copy() if m is None else m * self.momentum + grad
                grad = m
            step: np.ndarray = (base - self.lr * grad).astype(base.dtype, copy=False)
            return step
        m = self.m[name] = (1 - self.beta1) * grad if m is None else self.beta1 * m + (1 - self.beta1) * grad
        v = self.v.get(name)
        sq = np.square(grad)
        v = self.v[name] = (1 - self.beta2) * sq if v is None else self.beta2 * v + (1 - self.beta2) * sq
        adapted: np.ndarray = (base - self.lr * m / (np.sqrt(v) + self.tau)).astype(base.dtype, copy=False)
        return adapted

    def state_dict(self) -> Params:
        return {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("v.")}


class _FedOptAggregator(WeightedMeanAggregator):
    def __init__(self, global_params: Mapping[str, np.ndarray], strategy: FedOpt) -> None:
        super().__init__(global_params)
        self.strategy = strategy

    def apply(self, name: str, base: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        if not is_float(base.dtype):
            return super().apply(name, base, mean_delta)
        return self.strategy.step(name, base, mean_delta)
