"""NVFlare's hello-numpy-cross-val job.py: pre-trained models evaluated at every site, no training."""

import sys

from nvflare.app_common.np.recipes.cross_site_eval import NumpyCrossSiteEvalRecipe
from nvflare.recipe import SimEnv

server_dir, client_dir, workspace = sys.argv[1], sys.argv[2], sys.argv[3]
recipe = NumpyCrossSiteEvalRecipe(
    name="hello-numpy-cse",
    min_clients=2,
    model_locator_config={
        "model_dir": server_dir,
        "model_name": {"server_model_1": "server_1.npy", "server_model_2": "server_2.npy"},
    },
    client_model_dir=client_dir,
)
run = recipe.execute(SimEnv(num_clients=2, workspace_root=workspace))
print("Result can be found in :", run.get_result())
print("Job Status is:", run.get_status())
