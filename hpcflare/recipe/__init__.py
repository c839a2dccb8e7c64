"""Recipes: a job described in a few arguments, executed in any Env."""

from hpcflare.recipe.api import Recipe
from hpcflare.recipe.fedavg import FedAvgRecipe

__all__ = ["FedAvgRecipe", "Recipe"]
