"""FedMedianRecipe: coordinate-wise median aggregation (robust to outlier clients)."""

from __future__ import annotations

from hpcflare.recipe.api import Recipe


class FedMedianRecipe(Recipe):
    """Same arguments as FedAvgRecipe; with relays, every update is forwarded to the server unchanged."""

    strategy = "fedmedian"
