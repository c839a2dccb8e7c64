# NVFlare's hello-numpy job shape: a recipe, tracking, an Env, the Run's result and status.
import sys

from nvflare.app_common.np.recipes import NumpyFedAvgRecipe
from nvflare.recipe import PocEnv, SimEnv, add_experiment_tracking

if __name__ == "__main__":
    env_kind, workspace = sys.argv[1], sys.argv[2]
    recipe = NumpyFedAvgRecipe(
        name="hello-numpy",
        min_clients=2,
        num_rounds=3,
        model=[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        train_script="client.py",
        train_args="--add 1",
        client_memory_gc_rounds=1,
        server_memory_gc_rounds=1,
    )
    add_experiment_tracking(recipe, "tensorboard", tracking_config={"tb_folder": "tb_events"})
    if env_kind == "sim":
        env = SimEnv(num_clients=2, workspace_root=workspace, log_config="concise")
    else:
        env = PocEnv(num_clients=2, poc_workspace=workspace)
    run = recipe.execute(env)
    print("Result can be found in :", run.get_result())
    print("Job Status is:", run.get_status())
