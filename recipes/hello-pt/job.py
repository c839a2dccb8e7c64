"""hello-pt: NVFlare's hello-pt job, ported by renaming imports (nvflare.* -> hpcflare.*).

    python recipes/hello-pt/job.py [--n_clients 2] [--num_rounds 2] [--batch_size 32] [--env sim|local|mpi|slurm]

A small CNN (model.py) trained with FedAvg on synthetic CIFAR-shaped images (no download); the client
script is NVFlare's style, unchanged. Results: jobs/<job-id>/models/global_model.safetensors; per-site
accuracy in tracking/metrics.csv and TensorBoard (tracking/tensorboard).
"""

import argparse
from pathlib import Path

from model import SimpleNetwork

from hpcflare.recipe import FedAvgRecipe, add_experiment_tracking, job_cli

HERE = Path(__file__).resolve().parent


def define_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(
        parser, n_clients=2, rounds=2, privacy=("secagg", "he")
    )  # also NVFlare's --n_clients, --num_rounds
    parser.add_argument("--batch_size", type=int, default=32)
    return parser.parse_args()


def main():
    args = define_parser()
    recipe = FedAvgRecipe(
        name="hello-pt",
        **job_cli.recipe_arguments(args),
        initial_model=SimpleNetwork(),
        train_script=str(HERE / "client.py"),
        train_args=f"--batch_size {args.batch_size}",
        extra_files=[HERE / "model.py"],
        key_metric="accuracy",
    )
    add_experiment_tracking(recipe, tracking_type="tensorboard")
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    print()
    print("Job Status is:", run.get_status()["state"] if run.wait(None) else "running")
    print("Result can be found in :", job_cli.plain_result(run, args))
    print()


if __name__ == "__main__":
    main()
