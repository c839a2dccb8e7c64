"""Recipes for tabular jobs: federated k-means, XGBoost (histogram, bagging, vertical) and PSI."""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.recipe.api import Recipe


class KMeansRecipe(Recipe):
    """``KMeansRecipe(..., n_clusters=8, n_features=4)``: federated Lloyd's k-means (hpcflare.strategy.kmeans);
    the site script sends each cluster's mean and size. The result model holds ``centers`` and ``counts``."""

    strategy = "kmeans"

    def __init__(self, *args: Any, n_clusters: int, n_features: int, seed: int = 0, **kwargs: Any) -> None:
        if n_clusters < 1 or n_features < 1:
            raise ConfigError(f"KMeansRecipe needs n_clusters >= 1 and n_features >= 1, got {n_clusters}, {n_features}")
        kwargs.setdefault("model", {"centers": np.zeros((n_clusters, n_features), np.float64),
                                    "counts": np.zeros(n_clusters, np.float64)})
        super().__init__(*args, **kwargs)
        self.strategy_args = {"n_clusters": int(n_clusters), "seed": int(seed)}
