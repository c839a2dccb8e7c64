"""hello-pt: NVFlare's hello-pt job, ported by renaming imports (nvflare.* -> hpcflare.*).

    python recipes/hello-pt/job.py [--n_clients 2] [--num_rounds 2] [--batch_size 32] [--env sim|local]

A small CNN (model.py) trained with FedAvg on synthetic CIFAR-shaped images (no download); the client
script is NVFlare's style, unchanged. Results: jobs/<job-id>/models/global_model.safetensors; per-site
accuracy in tracking/metrics.csv and TensorBoard (tracking/tensorboard).
"""

import argparse
from pathlib import Path

from model import SimpleNetwork

from hpcflare.env import LocalEnv, SimEnv
from hpcflare.recipe import FedAvgRecipe, add_experiment_tracking

HERE = Path(__file__).resolve().parent


def define_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--env", choices=["sim", "local"], default="sim")
    parser.add_argument("--job_root", default="jobs")
    return parser.parse_args()


def main():
    args = define_parser()
    recipe = FedAvgRecipe(
        name="hello-pt",
        min_clients=args.n_clients,
        num_rounds=args.num_rounds,
        initial_model=SimpleNetwork(),
        train_script=str(HERE / "client.py"),
        train_args=f"--batch_size {args.batch_size}",
        extra_files=[HERE / "model.py"],
        key_metric="accuracy",
    )
    add_experiment_tracking(recipe, tracking_type="tensorboard")
    env = SimEnv(num_clients=args.n_clients, workspace_root=args.job_root) if args.env == "sim" else LocalEnv(
        job_root=args.job_root)
    run = recipe.execute(env)
    print()
    print("Job Status is:", run.get_status()["state"] if run.wait(None) else "running")
    print("Result can be found in :", run.get_result())
    print()


if __name__ == "__main__":
    main()
