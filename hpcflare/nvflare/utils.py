"""``nvflare.recipe.utils``: the helpers NVFlare's job.py files call on a recipe."""

from __future__ import annotations

from typing import Any

from hpcflare.recipe.api import (
    Recipe,
    add_cross_site_evaluation,
    add_experiment_tracking,
    add_final_global_evaluation,
)


def set_per_site_config(recipe: Recipe, config: dict[str, dict[str, Any]]) -> None:
    """NVFlare's: {site: {train_args: ...}} names the sites and their script arguments."""
    recipe.set_per_site_config(config)


__all__ = [
    "add_cross_site_evaluation",
    "add_experiment_tracking",
    "add_final_global_evaluation",
    "set_per_site_config",
]
