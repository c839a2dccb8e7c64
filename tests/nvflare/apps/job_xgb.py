"""NVFlare's XGBoost recipes as its examples build them: a data loader per site, no training script."""

import sys

from npy_loader import NpyDataLoader
from nvflare.app_opt.xgboost.histogram_based_v2.csv_data_loader import CSVDataLoader
from nvflare.app_opt.xgboost.recipes import XGBBaggingRecipe, XGBHorizontalRecipe, XGBVerticalRecipe
from nvflare.recipe import SimEnv

mode, data, workspace = sys.argv[1], sys.argv[2], sys.argv[3]
sites = ["site-1", "site-2", "site-3"]
params = {"max_depth": 3, "eta": 0.3, "objective": "binary:logistic", "eval_metric": "auc", "nthread": 1}
if mode == "horizontal":
    recipe = XGBHorizontalRecipe(
        name="xgb_horizontal",
        min_clients=3,
        num_rounds=15,
        xgb_params=params,
        per_site_config={site: {"data_loader": CSVDataLoader(folder=data)} for site in sites},
    )
elif mode == "vertical":  # rows aligned already (a PSI job's output); site-1 holds the labels
    sites = sites[:2]
    recipe = XGBVerticalRecipe(
        name="xgb_vertical",
        min_clients=2,
        num_rounds=15,
        label_owner="site-1",
        xgb_params=params,
        per_site_config={site: {"data_loader": CSVDataLoader(folder=data)} for site in sites},
    )
else:
    recipe = XGBBaggingRecipe(
        name="xgb_bagging",
        min_clients=3,
        num_rounds=4,
        num_local_parallel_tree=3,
        local_subsample=0.8,
        max_depth=3,
        nthread=1,
        per_site_config={site: {"data_loader": NpyDataLoader(data_path=data, seed=7)} for site in sites},
    )
run = recipe.execute(SimEnv(clients=sites, workspace_root=workspace))
print("Result can be found in :", run.get_result())
print("Job Status is:", run.get_status())
