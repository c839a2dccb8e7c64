"""sklearn-linear: federated logistic regression or linear SVM (scikit-learn), FedAvg of the coefficients.

    python recipes/sklearn-linear/job.py [--env local|sim|mpi|slurm] [--n-clients 4] [--rounds 10]
                                         [--model logreg|svm] [--data-path 'data/{site}.csv' --features N]

Every round each site starts from the global ``coef``/``intercept``, trains a few local iterations on its
rows, and sends the coefficients; the server averages them weighted by row counts. Without --data-path the
sites hold non-IID-sized shards of a synthetic HIGGS-like table.
"""

import argparse
from pathlib import Path

import numpy as np
import safetensors.numpy

from hpcflare.recipe import FedAvgRecipe, job_cli
from hpcflare.tabular.data import N_FEATURES

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=4, rounds=10, privacy=("secagg", "he"))
    parser.add_argument("--model", choices=["logreg", "svm"], default="logreg")
    parser.add_argument(
        "--features", type=int, default=N_FEATURES, help="feature columns (every site's table)"
    )
    parser.add_argument(
        "--local-iters", type=int, default=5, help="local solver iterations / epochs per round"
    )
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with a header row; {site} = site name"
    )
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--rows", type=int, default=40_000, help="synthetic population size")
    args = parser.parse_args()
    train_args = [
        "--model",
        args.model,
        "--local-iters",
        str(args.local_iters),
        "--n-sites",
        str(args.n_clients),
        "--rows",
        str(args.rows),
        "--label-column",
        args.label_column,
    ]
    if args.data_path:
        train_args += ["--data-path", args.data_path]
    model = {"coef": np.zeros((1, args.features), np.float64), "intercept": np.zeros(1, np.float64)}
    recipe = FedAvgRecipe(
        name=f"sklearn-{args.model}",
        model=model,
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=train_args,
        key_metric="accuracy",
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = safetensors.numpy.load_file(str(job_cli.plain_result(run, args)))
    print(f"job {run.get_job_id()}: {run.get_status()['state']}")
    print(f"coef[:8] = {np.round(result['coef'][0, :8], 3)}  intercept = {result['intercept'][0]:.3f}")


if __name__ == "__main__":
    main()
