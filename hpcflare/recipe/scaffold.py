"""ScaffoldRecipe: SCAFFOLD; the control variates are added to the global model by the server."""

from __future__ import annotations

from typing import Any

from hpcflare.recipe.api import Recipe


class ScaffoldRecipe(Recipe):
    """Same arguments as FedAvgRecipe; clients use ``hpcflare.client.scaffold.ScaffoldClient``."""

    strategy = "scaffold"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategy_args = {"num_clients": len(self.clients)}
