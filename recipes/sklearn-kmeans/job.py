"""sklearn-kmeans: federated k-means (Lloyd's algorithm, assignment at the sites) with scikit-learn.

    python recipes/sklearn-kmeans/job.py [--env local|sim|mpi|slurm] [--n-clients 4] [--rounds 10]
                                         [--clusters 6] [--features 4] [--data-path 'data/{site}.csv']

Without --data-path every site clusters its shard of a synthetic non-IID table (each site sees mostly a
few clusters). The result is models/final_model.safetensors: ``centers`` (k x d) and ``counts``.
"""

import argparse
from pathlib import Path

import numpy as np
import safetensors.numpy

from hpcflare.recipe import KMeansRecipe, job_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=4, rounds=10)
    parser.add_argument("--clusters", type=int, default=6)
    parser.add_argument("--features", type=int, default=4, help="feature columns (every site must have them)")
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with a header row; {site} = site name"
    )
    parser.add_argument("--rows", type=int, default=12_000, help="synthetic population size")
    args = parser.parse_args()
    train_args = ["--n-sites", str(args.n_clients), "--rows", str(args.rows)]
    if args.data_path:
        train_args += ["--data-path", args.data_path]
    recipe = KMeansRecipe(
        name="sklearn-kmeans",
        n_clusters=args.clusters,
        n_features=args.features,
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=train_args,
        key_metric="inertia",
        key_metric_mode="min",
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = safetensors.numpy.load_file(str(run.get_result()))
    print(f"job {run.get_job_id()}: {run.get_status()['state']}")
    print(f"centers ({int(result['counts'].sum())} rows last round):")
    print(np.array2string(result["centers"], precision=2, suppress_small=True))


if __name__ == "__main__":
    main()
