"""FedAvgRecipe: weighted federated averaging (server-side in-time accumulation)."""

from __future__ import annotations

from hpcflare.recipe.api import Recipe


class FedAvgRecipe(Recipe):
    """``FedAvgRecipe(name, model, min_clients, num_rounds, train_script, train_args, ...)``."""

    strategy = "fedavg"
