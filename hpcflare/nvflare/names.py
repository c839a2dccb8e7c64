"""The job side's NVFlare module names and the hpcflare module that provides each one's names."""

from __future__ import annotations

_RECIPES = "hpcflare.nvflare.recipes"
_ENVS = "hpcflare.nvflare.envs"
_JOB = "hpcflare.nvflare.fed_job"
_UTILS = "hpcflare.nvflare.utils"
_XGB = "hpcflare.nvflare.xgb"

JOB_MODULES = {
    "nvflare": _JOB,
    "nvflare.recipe": "hpcflare.nvflare.recipe_api",
    "nvflare.recipe.utils": _UTILS,
    "nvflare.recipe.sim_env": _ENVS,
    "nvflare.recipe.poc_env": _ENVS,
    "nvflare.recipe.prod_env": _ENVS,
    "nvflare.recipe.run": _ENVS,
    "nvflare.recipe.fedavg": _RECIPES,
    "nvflare.recipe.cyclic": _RECIPES,
    "nvflare.recipe.fedstats": "hpcflare.nvflare.stats",
    "nvflare.app_opt.pt.recipes": _RECIPES,
    "nvflare.app_opt.pt.recipes.fedavg": _RECIPES,
    "nvflare.app_opt.pt.recipes.fedopt": _RECIPES,
    "nvflare.app_opt.pt.recipes.fedprox": _RECIPES,
    "nvflare.app_opt.pt.recipes.scaffold": _RECIPES,
    "nvflare.app_opt.pt.recipes.cyclic": _RECIPES,
    "nvflare.app_opt.pt.recipes.fedeval": _RECIPES,
    "nvflare.app_opt.pt.recipes.swarm": _RECIPES,
    "nvflare.app_opt.tf.recipes": _RECIPES,
    "nvflare.app_opt.tf.recipes.fedavg": _RECIPES,
    "nvflare.app_opt.tf.recipes.fedopt": _RECIPES,
    "nvflare.app_opt.tf.recipes.scaffold": _RECIPES,
    "nvflare.app_opt.tf.recipes.cyclic": _RECIPES,
    "nvflare.app_common.np.recipes": _RECIPES,
    "nvflare.app_common.np.recipes.fedavg": _RECIPES,
    "nvflare.app_common.np.recipes.cross_site_eval": "hpcflare.nvflare.cross_site",
    "nvflare.app_opt.sklearn.recipes": _RECIPES,
    "nvflare.app_opt.sklearn.recipes.fedavg": _RECIPES,
    "nvflare.app_opt.sklearn.recipes.kmeans": _RECIPES,
    "nvflare.app_opt.xgboost.recipes": _XGB,
    "nvflare.app_opt.xgboost.recipes.bagging": _XGB,
    "nvflare.app_opt.xgboost.recipes.histogram": _XGB,
    "nvflare.app_opt.xgboost.recipes.vertical": _XGB,
    "nvflare.app_common.psi.recipes": "hpcflare.nvflare.psi",
    "nvflare.app_common.psi.recipes.dh_psi": "hpcflare.nvflare.psi",
    "nvflare.job_config": _JOB,
    "nvflare.job_config.api": _JOB,
    "nvflare.job_config.base_fed_job": _JOB,
    "nvflare.job_config.script_runner": _JOB,
    "nvflare.app_opt.pt.job_config": _JOB,
    "nvflare.app_opt.pt.job_config.fed_avg": _JOB,
    "nvflare.app_opt.pt.job_config.model": _JOB,
    "nvflare.app_opt.pt.job_config.base_fed_job": _JOB,
    "nvflare.app_common.workflows": _JOB,
    "nvflare.app_common.workflows.fedavg": _JOB,
    "nvflare.apis.dxo": "hpcflare.nvflare.constants",
}
"""NVFlare module -> the hpcflare module whose public names it holds (``hpcflare nvflare JOB.py``)."""
