"""A Flower app's job (``FlowerRecipe``): Flower's own engine aggregates (see hpcflare.runtime.flower), so this
strategy only names the job kind and checks its options; hpcflare never plans its rounds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.strategy.api import Aggregator, RoundPlan, Strategy


class FlowerApp(Strategy):
    """``num_rounds``: passed to the app as run config ``num-server-rounds`` (None: the app's own);
    ``run_config``: further run config overrides; ``port``: the SuperLink's port (0: a free one)."""

    name = "flower"
    supports_relays = False  # Flower aggregates on its SuperLink's ServerApp

    def __init__(
        self, num_rounds: int | None = None, run_config: dict[str, Any] | None = None, port: int = 0
    ) -> None:
        if num_rounds is not None and (not isinstance(num_rounds, int) or num_rounds < 1):
            raise ConfigError(f"a Flower app's num_rounds must be a positive integer, got {num_rounds!r}")
        if run_config is not None and not isinstance(run_config, dict):
            raise ConfigError("a Flower app's run_config is a mapping of run-config keys to values")
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"a Flower app's port must be in [0, 65535], got {port!r}")
        self.num_rounds, self.run_config, self.port = num_rounds, run_config or {}, port

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        raise ConfigError("a Flower app's rounds run on Flower's SuperLink, not on hpcflare's server")

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        raise ConfigError("a Flower app aggregates with its own ServerApp")
