"""FedOptRecipe: FedAvg's round with a server optimizer (SGD with momentum, or Adam) on the mean update."""

from __future__ import annotations

from typing import Any

from hpcflare.recipe.api import Recipe


class FedOptRecipe(Recipe):
    """``FedOptRecipe(..., optimizer="sgd"|"adam", lr=1.0, momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3)``."""

    strategy = "fedopt"

    def __init__(
        self,
        *args: Any,
        optimizer: str = "sgd",
        lr: float = 1.0,
        momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.strategy_args = {
            "optimizer": optimizer,
            "lr": lr,
            "momentum": momentum,
            "beta1": beta1,
            "beta2": beta2,
            "tau": tau,
        }
