"""XGBoost bagging (tree-based horizontal FL): each round every site boosts on its own rows starting from the
global forest, and the server appends all sites' new trees as one boosting iteration, each site's leaves
scaled by its share of the rows (NUM_STEPS_CURRENT_ROUND), so each iteration averages the sites' trees.

The model travels as XGBoost JSON in one uint8 tensor (hpcflare.tabular.xgb_model); the server parses and
checks each upload's trees without xgboost and keeps only the new trees until the round closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcflare.errors import UpdateRejectedError
from hpcflare.strategy.api import Aggregator, AnyLength, ClientUpdate, Params, Strategy
from hpcflare.tabular import xgb_model


class XGBBagging(Strategy):
    name = "xgb_bagging"
    supports_relays = False  # the merge needs every site's trees, not a sum

    def __init__(self, max_model_bytes: int | None = None) -> None:
        self.max_model_bytes = max_model_bytes

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        return {xgb_model.MODEL_KEY: AnyLength(np.dtype(np.uint8), self.max_model_bytes)}

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        return {"xgboost": {"mode": "bagging", "new_trees_per_round": 1}}

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _BaggingAggregator(global_params)


class _BaggingAggregator(Aggregator):
    def __init__(self, global_params: Mapping[str, np.ndarray]) -> None:
        if xgb_model.MODEL_KEY not in global_params:
            raise UpdateRejectedError(
                f"an xgb_bagging job's model is {{{xgb_model.MODEL_KEY!r}: uint8 JSON}}"
            )
        self._global = global_params[xgb_model.MODEL_KEY]
        self._base = (
            None
            if xgb_model.is_empty(self._global)
            else xgb_model.parse(xgb_model.from_tensor(self._global), "the global model")
        )
        self._first: dict[str, Any] | None = None
        self._starts: list[
            tuple[dict[str, Any], float]
        ] = []  # round 1: each site's model settings and weight
        self._additions: list[tuple[list[tuple[dict[str, Any], int]], float]] = []

    @property
    def count(self) -> int:
        return len(self._additions)

    def add(self, update: ClientUpdate) -> None:
        if xgb_model.MODEL_KEY not in update.params:
            raise UpdateRejectedError(f"{update.site} sent no {xgb_model.MODEL_KEY!r} tensor")
        model = xgb_model.parse(xgb_model.from_tensor(update.params[xgb_model.MODEL_KEY]), update.site)
        trees = xgb_model.new_trees(model, self._base, update.site)
        if self._base is None and self._first is not None:
            xgb_model.same_kind(model, self._first, update.site)
        self._first = self._first or model
        if self._base is None:
            self._starts.append((model, update.weight))
        self._additions.append((trees, update.weight))

    def result(self) -> Params:
        if not self._additions or self._first is None:
            return {xgb_model.MODEL_KEY: np.asarray(self._global)}
        merged = xgb_model.merge_forest(
            self._base,
            self._first,
            self._additions,
            xgb_model.mean_base_score(self._starts) if self._base is None else None,
        )
        return {xgb_model.MODEL_KEY: xgb_model.to_tensor(xgb_model.dumps(merged))}
