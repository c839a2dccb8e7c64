"""SCAFFOLD (Karimireddy et al. 2020): control variates correct client drift on non-IID data.

The server's control variate ``c`` travels alongside the model as extra tensors named ``CONTROL_PREFIX +
<param>`` (added as zeros at job start by ``initial_params``), so it rides the same streaming/staging
path as the weights. Each client sends its weights (FULL or DIFF) plus ``delta_c_i`` under the same
control names (see ``hpcflare.client.scaffold``). The server then applies

    x <- x + mean_w(delta_x_i)                 (weighted by NUM_STEPS_CURRENT_ROUND, as FedAvg)
    c <- c + (|S| / N) * mean(delta_c_i)       (unweighted; |S| = sites that answered, N = all sites)

Both are sums, so relays aggregate SCAFFOLD rounds as partial sums too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, ClientUpdate, Strategy, UpdateKind

CONTROL_PREFIX = "scaffold.c."


class Scaffold(Strategy):
    name = "scaffold"

    def __init__(self, num_clients: int) -> None:
        if int(num_clients) < 1:
            raise ConfigError(f"scaffold needs num_clients >= 1, got {num_clients}")
        self.num_clients = int(num_clients)

    def initial_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in list(params.items()):
            if not name.startswith(CONTROL_PREFIX) and np.issubdtype(value.dtype, np.floating):
                params.setdefault(CONTROL_PREFIX + name, np.zeros_like(value))
        return params

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _ScaffoldAggregator(global_params, self.num_clients)


class _ScaffoldAggregator(WeightedMeanAggregator):
    def __init__(self, global_params: Mapping[str, np.ndarray], num_clients: int) -> None:
        super().__init__(global_params)
        self.num_clients = num_clients

    def add(self, update: ClientUpdate) -> None:
        model = {k: v for k, v in update.params.items() if not k.startswith(CONTROL_PREFIX)}
        control = {k: v for k, v in update.params.items() if k.startswith(CONTROL_PREFIX)}
        super().add(ClientUpdate(update.site, model, update.params_type, update.weight))
        if control:  # always a difference, one vote per site
            super().add(ClientUpdate(update.site, control, UpdateKind.DIFF, 1.0))
            self._count -= 1

    def apply(self, name: str, base: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        if name.startswith(CONTROL_PREFIX):
            mean_delta *= mean_delta.dtype.type(self._weights_seen(name) / self.num_clients)
        return super().apply(name, base, mean_delta)

    def _weights_seen(self, name: str) -> float:
        return min(float(self._weights.get(name, 0.0)), float(self.num_clients))
