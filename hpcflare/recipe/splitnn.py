"""SplitNNRecipe: split learning on vertically partitioned rows (see hpcflare.strategy.splitnn)."""

from __future__ import annotations

from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.recipe.api import Recipe


class SplitNNRecipe(Recipe):
    """``SplitNNRecipe(..., model={"site-1/...": ..., "site-2/...": ...}, label_owner="site-1", window=8,
    batch_timeout=300)``: every site trains the bottom of the network on its own columns of the same rows
    (aligned first, e.g. with PSIRecipe) and the label owner also the top; per batch, activations go up and
    gradients come back through the server. A round is one pass over the rows; ``model`` holds every site's
    part, named ``<site>/...``, and every site must take part in every round (``min_clients`` = all)."""

    strategy = "splitnn"

    def __init__(
        self,
        *args: Any,
        label_owner: str,
        window: int = 8,
        batch_timeout: float = 300.0,
        max_batch_bytes: int = 512 << 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if label_owner not in self.clients:
            raise ConfigError(f"label_owner {label_owner!r} is not one of the job's clients {self.clients}")
        if self.relays:
            raise ConfigError(
                "split learning routes each site's activations to the label owner: use relays=0"
            )
        if self.min_clients != len(self.clients):
            raise ConfigError(
                f"split learning needs every site's columns in every round: min_clients={len(self.clients)}, "
                f"not {self.min_clients}"
            )
        owners = (
            {str(name).split("/", 1)[0] for name in self.model} if isinstance(self.model, dict) else set()
        )
        if not isinstance(self.model, dict) or not owners <= set(self.clients):
            raise ConfigError(
                "a SplitNN model is {'<site>/<tensor>': array} for the job's sites: each site's part named by "
                f"its site (got parts for {sorted(owners)})"
            )
        self.strategy_args = {
            "label_owner": label_owner,
            "window": window,
            "batch_timeout": batch_timeout,
            "max_batch_bytes": max_batch_bytes,
        }
