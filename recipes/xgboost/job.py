"""xgboost: federated XGBoost on tabular data, histogram-based (XGBoost's federated collective) or bagging.

    python recipes/xgboost/job.py [--env local|sim|mpi|slurm] [--n-clients 8] [--mode histogram|bagging]
                                  [--boost-rounds 50] [--rounds 20] [--data-path 'data/{site}.csv']

histogram: one job round; the sites run xgb.train together, XGBoost allreducing gradient histograms through
the tracker on the server rank, so the model equals centralized training on the union of the rows.
bagging: --rounds job rounds; each round every site adds a tree from the global forest on its own rows and
the server merges them into one iteration, leaves scaled by row share.
Vertical XGBoost (different columns per site, rows aligned by PSI) is recipes/xgboost-vertical.
Without --data-path the sites hold non-IID-sized shards of a synthetic HIGGS-like table.
"""

import argparse
import json
from pathlib import Path

import safetensors.numpy

from hpcflare.recipe import XGBBaggingRecipe, XGBHistogramRecipe, job_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=8, rounds=20)
    parser.add_argument("--mode", choices=["histogram", "bagging"], default="histogram")
    parser.add_argument("--boost-rounds", type=int, default=50, help="histogram mode: boosting rounds")
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with a header row; {site} = site name"
    )
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--rows", type=int, default=40_000, help="synthetic population size")
    parser.add_argument("--tls", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    if args.mode == "histogram":
        job_cli.refuse_rounds(parser, args, "histogram mode boosts in one job round; set --boost-rounds")
        args.num_rounds = 1
    train_args = [
        "--mode",
        args.mode,
        "--boost-rounds",
        str(args.boost_rounds),
        "--max-depth",
        str(args.max_depth),
        "--eta",
        str(args.eta),
        "--n-sites",
        str(args.n_clients),
        "--rows",
        str(args.rows),
        "--label-column",
        args.label_column,
    ] + (["--data-path", args.data_path] if args.data_path else [])
    kind = XGBHistogramRecipe if args.mode == "histogram" else XGBBaggingRecipe
    recipe = kind(
        name=f"xgboost-{args.mode}",
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=train_args,
        tls=args.tls,
        key_metric="auc",
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = safetensors.numpy.load_file(str(run.get_result()))["model"]
    out = run.job_dir.models_dir / "xgboost_model.json"
    out.write_bytes(result.tobytes())  # xgb.Booster(model_file=...) loads it
    trees = len(json.loads(out.read_bytes())["learner"]["gradient_booster"]["model"]["trees"])
    print(f"job {run.get_job_id()}: {run.get_status()['state']}; {trees} trees in {out}")


if __name__ == "__main__":
    main()
