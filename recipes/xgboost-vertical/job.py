"""xgboost-vertical: sites hold different columns of the same people; align rows with PSI, then train XGBoost
together on XGBoost's column-split collective (the label owner, site-1, is the only site with labels).

    python recipes/xgboost-vertical/job.py [--env local|sim|mpi|slurm] [--n-clients 3] [--boost-rounds 30]
                                           [--data-path 'data/{site}.csv' --id-column id --label-column label]

Runs two jobs: recipes/psi on the sites' ID columns, then the vertical training. The model's features are the
sites' columns in rank order (label owner first). Without --data-path the sites hold column blocks of a
synthetic table, each with a random 90% of the people.
"""

import argparse
import json
from pathlib import Path

import safetensors.numpy

from hpcflare.recipe import XGBVerticalRecipe, job_cli, vertical_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=3, rounds=1)
    parser.add_argument("--boost-rounds", type=int, default=30)
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with an ID column; {site} = site name"
    )
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic population size")
    parser.add_argument(
        "--psi-job", default=None, help="reuse this PSI job's intersections instead of running PSI"
    )
    args = parser.parse_args()
    job_cli.refuse_rounds(parser, args, "vertical XGBoost boosts in one job round; set --boost-rounds")
    psi_job = vertical_cli.psi_job(args, HERE.parent / "psi" / "job.py")
    train_args = [
        "--psi-job",
        str(psi_job),
        "--boost-rounds",
        str(args.boost_rounds),
        "--n-sites",
        str(args.n_clients),
        "--rows",
        str(args.rows),
        "--id-column",
        args.id_column,
        "--label-column",
        args.label_column,
    ]
    if args.data_path:
        train_args += ["--data-path", args.data_path]
    recipe = XGBVerticalRecipe(
        name="xgboost-vertical",
        label_owner="site-1",
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=train_args,
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = safetensors.numpy.load_file(str(run.get_result()))["model"]
    out = run.job_dir.models_dir / "xgboost_model.json"
    out.write_bytes(result.tobytes())
    trees = len(json.loads(out.read_bytes())["learner"]["gradient_booster"]["model"]["trees"])
    print(f"job {run.get_job_id()}: {run.get_status()['state']}; {trees} trees in {out}")


if __name__ == "__main__":
    main()
