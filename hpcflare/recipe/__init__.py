"""Recipes: a job described in a few arguments, executed in any Env."""

from hpcflare.recipe.api import Recipe, add_cross_site_evaluation, add_experiment_tracking
from hpcflare.recipe.fedavg import FedAvgRecipe
from hpcflare.recipe.fedmedian import FedMedianRecipe
from hpcflare.recipe.fedopt import FedOptRecipe
from hpcflare.recipe.flower import FlowerRecipe
from hpcflare.recipe.scaffold import ScaffoldRecipe
from hpcflare.recipe.splitnn import SplitNNRecipe
from hpcflare.recipe.tabular import (
    KMeansRecipe,
    PSIRecipe,
    XGBBaggingRecipe,
    XGBHistogramRecipe,
    XGBVerticalRecipe,
)
from hpcflare.recipe.workflows import (
    CrossSiteEvalRecipe,
    CyclicRecipe,
    FedEvalRecipe,
    FedStatsRecipe,
    SwarmRecipe,
)

__all__ = [
    "CrossSiteEvalRecipe",
    "CyclicRecipe",
    "FedEvalRecipe",
    "FedStatsRecipe",
    "FedAvgRecipe",
    "FedMedianRecipe",
    "FedOptRecipe",
    "FlowerRecipe",
    "KMeansRecipe",
    "PSIRecipe",
    "Recipe",
    "ScaffoldRecipe",
    "SplitNNRecipe",
    "SwarmRecipe",
    "XGBBaggingRecipe",
    "XGBHistogramRecipe",
    "XGBVerticalRecipe",
    "add_cross_site_evaluation",
    "add_experiment_tracking",
]
