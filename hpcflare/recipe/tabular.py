"""Recipes for tabular jobs: federated k-means, XGBoost (histogram, bagging, vertical) and PSI."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.recipe.api import Recipe
from hpcflare.tabular import xgb_model


class KMeansRecipe(Recipe):
    """``KMeansRecipe(..., n_clusters=8, n_features=4)``: federated Lloyd's k-means (hpcflare.strategy.kmeans);
    the site script sends each cluster's mean and size. The result model holds ``centers`` and ``counts``."""

    strategy = "kmeans"

    def __init__(self, *args: Any, n_clusters: int, n_features: int, seed: int = 0, **kwargs: Any) -> None:
        if n_clusters < 1 or n_features < 1:
            raise ConfigError(
                f"KMeansRecipe needs n_clusters >= 1 and n_features >= 1, got {n_clusters}, {n_features}"
            )
        kwargs.setdefault(
            "model",
            {
                "centers": np.zeros((n_clusters, n_features), np.float64),
                "counts": np.zeros(n_clusters, np.float64),
            },
        )
        super().__init__(*args, **kwargs)
        self.strategy_args = {"n_clusters": int(n_clusters), "seed": int(seed)}


def _empty_tree_model() -> dict[str, np.ndarray]:
    return {xgb_model.MODEL_KEY: xgb_model.to_tensor(xgb_model.EMPTY)}


class XGBHistogramRecipe(Recipe):
    """``XGBHistogramRecipe(..., collective_timeout=300)``: horizontal histogram-based XGBoost on XGBoost's
    federated collective (hpcflare.strategy.xgb_histogram). One job round holds the whole boosting; the
    number of boosting rounds is the site script's own argument. The result model is the booster's JSON."""

    strategy = "xgb_histogram"
    split = "horizontal"

    def __init__(
        self,
        *args: Any,
        collective_timeout: int = 300,
        tracker_start_timeout: float = 60.0,
        label_owner: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("model", _empty_tree_model())
        kwargs["num_rounds"] = 1
        super().__init__(*args, **kwargs)
        if self.relays:
            raise ConfigError(
                "XGBoost's collective connects every site to the server's tracker: use relays=0"
            )
        self.strategy_args = {
            "split": self.split,
            "label_owner": label_owner,
            "collective_timeout": int(collective_timeout),
            "tracker_start_timeout": float(tracker_start_timeout),
        }


class XGBVerticalRecipe(XGBHistogramRecipe):
    """``XGBVerticalRecipe(..., label_owner="site-1")``: sites hold different columns of the same rows (aligned
    first, e.g. with PSIRecipe); XGBoost's column-split collective; the label owner is rank 0."""

    split = "vertical"

    def __init__(self, *args: Any, label_owner: str, **kwargs: Any) -> None:
        super().__init__(*args, label_owner=label_owner, **kwargs)
        if label_owner not in self.clients:
            raise ConfigError(f"label_owner {label_owner!r} is not one of the job's clients {self.clients}")


class XGBBaggingRecipe(Recipe):
    """``XGBBaggingRecipe(..., num_rounds=R)``: every round each site adds trees on its rows from the global
    forest; the server merges them (hpcflare.strategy.xgb_bagging). The result model is the forest's JSON."""

    strategy = "xgb_bagging"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model", _empty_tree_model())
        super().__init__(*args, **kwargs)
        if self.relays:
            raise ConfigError("bagging merges every site's trees at the server: use relays=0")


class PSIRecipe(Recipe):
    """``PSIRecipe(..., train_script=client.py)``: private set intersection of the sites' string IDs
    (hpcflare.strategy.psi) among the sites registered at round 1 (min_clients of them at least; every one of
    those must stay to the end); each site's script keeps its intersection, the server writes only sizes
    (models/psi.json)."""

    strategy = "psi"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model", {"psi": np.zeros(1, np.uint8)})
        super().__init__(*args, **kwargs)
        self.num_rounds = (
            len(self.clients) + 1
        )  # the ring is the sites registered at round 1; extra rounds skip
        self.strategy_args = {"salt": secrets.token_hex(16)}
