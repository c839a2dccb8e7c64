"""FedMedian: coordinate-wise median of the clients' models (robust to a minority of outlier updates).

Not decomposable: the median of medians is not the median, so every update must reach the server. Memory is
O(clients x model) by nature; relays forward each update unchanged instead of aggregating it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hpcflare.strategy.api import Aggregator, ClientUpdate, Params, Strategy, UpdateKind


class MedianAggregator(Aggregator):
    decomposable = False

    def __init__(self, global_params: Mapping[str, np.ndarray]) -> None:
        self._global = global_params
        self._models: list[Params] = []

    @property
    def count(self) -> int:
        return len(self._models)

    def add(self, update: ClientUpdate) -> None:
        model: Params = {}
        for name, value in update.params.items():
            value = np.array(value, dtype=np.float64)
            model[name] = value + self._global[name] if update.params_type == UpdateKind.DIFF else value
        self._models.append(model)

    def result(self) -> Params:
        out: Params = {}
        for name, base in self._global.items():
            values = [m[name] for m in self._models if name in m]
            if not values:
                out[name] = np.array(base, copy=True)
                continue
            median = np.median(np.stack(values), axis=0)
            out[name] = (np.rint(median) if np.issubdtype(base.dtype, np.integer) else median).astype(
                base.dtype
            )
        self._models.clear()
        return out


class FedMedian(Strategy):
    name = "fedmedian"

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return MedianAggregator(global_params)
