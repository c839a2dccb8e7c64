# FedProx's mu reaches the sites; cross-site evaluation (or only the final global model) after training.
import sys

from nvflare.app_opt.pt.recipes.fedprox import FedProxRecipe
from nvflare.recipe import SimEnv
from nvflare.recipe.utils import add_cross_site_evaluation, add_final_global_evaluation

if __name__ == "__main__":
    recipe = FedProxRecipe(
        name="prox-eval",
        min_clients=2,
        num_rounds=2,
        model=[[0.0, 0.0], [0.0, 0.0]],
        train_script="client.py",
        fedprox_mu=0.25,
    )
    if sys.argv[2] == "cross_site":
        add_cross_site_evaluation(recipe)
    else:
        add_final_global_evaluation(recipe)
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=sys.argv[1]))
    print("Result can be found in :", run.get_result())
