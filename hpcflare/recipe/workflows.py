"""Recipes for workflows other than averaging: cyclic transfer, federated evaluation, cross-site evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.job import expand_site_clients, whole_number
from hpcflare.recipe.api import Recipe


class CyclicRecipe(Recipe):
    """``CyclicRecipe(..., num_rounds=passes)``: the model visits every site ``passes`` times in job order;
    a job round is one hop, so job.yaml gets num_rounds = passes x sites (an institution's virtual clients,
    ``site_clients``, each a site)."""

    strategy = "cyclic"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes = self.num_rounds
        self.num_rounds = self.passes * len(expand_site_clients(self.clients, self.site_clients)[0])


class FedEvalRecipe(Recipe):
    """Evaluate ``model`` (or ``initial_checkpoint``) at every site once; results in models/evaluation.json."""

    strategy = "fedeval"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("num_rounds", 1)
        super().__init__(*args, **kwargs)


class CrossSiteEvalRecipe(Recipe):
    """``num_rounds`` FedAvg training rounds (0 = none), then every site's model (and the global one)
    evaluated at every site; the matrix is in cross_site/matrix.json."""

    strategy = "cross_site_eval"

    def __init__(
        self,
        *args: Any,
        server_models: Mapping[str, str | Path] | None = None,
        submit_models: bool = True,
        evaluate_global: bool = True,
        train_rounds: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``train_rounds``: the FedAvg rounds before the evaluation (0: none; default num_rounds).
        ``server_models``: {name: .safetensors file} evaluated too (pre-trained models the server holds);
        ``submit_models=False``: the sites' own models are not collected; ``evaluate_global=False``: the global
        model is not evaluated."""
        files = {name: Path(path) for name, path in (server_models or {}).items()}
        for name, path in files.items():
            if path.suffix != ".safetensors" or not path.is_file():
                raise ConfigError(f"server model {name!r}: {path} is not a .safetensors file")
        kwargs["extra_files"] = [*kwargs.get("extra_files", ()), *files.values()]
        super().__init__(*args, **kwargs)
        if train_rounds is not None:
            self.num_rounds = whole_number("train_rounds", train_rounds, 0)
        self.strategy_args = {"train_rounds": self.num_rounds}
        if files or not submit_models or not evaluate_global:
            self.strategy_args.update(
                server_models={name: path.name for name, path in files.items()},
                submit_models=submit_models,
                evaluate_global=evaluate_global,
            )
        self.num_rounds = self.num_rounds + 1 + len(self.clients) * submit_models + len(files) + 1


class FedStatsRecipe(Recipe):
    """``FedStatsRecipe(..., features=["age", "bmi"], bins=20, min_count=10, noise=0.0)``: two rounds of
    guarded statistics (hpcflare.client.stats on the sites); the result is models/statistics.json."""

    strategy = "fedstats"

    def __init__(
        self,
        *args: Any,
        features: list[str],
        bins: int = 20,
        min_count: int = 10,
        noise: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("num_rounds", 2)
        kwargs.setdefault(
            "model", {"fedstats": np.zeros(1, np.float64)}
        )  # replaced by the statistics tensors
        super().__init__(*args, **kwargs)
        self.strategy_args = {
            "features": list(features),
            "bins": bins,
            "min_count": min_count,
            "noise": noise,
        }


class SwarmRecipe(Recipe):
    """Swarm learning: the sites take turns aggregating (FedAvg) and serve the model to each other; the
    server only manages the job and keeps the final model. Clients are ordinary FedAvg scripts."""

    strategy = "swarm"
