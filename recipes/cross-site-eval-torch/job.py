"""cross-site-eval-torch: FedAvg training, then every site's model evaluated at every site (a matrix).

    python recipes/cross-site-eval-torch/job.py [--env local|sim|mpi|slurm] [--n-clients 4] [--num-rounds 5]
                                                [--workflow cross-site|cyclic|fedeval]

--workflow cyclic passes the model site to site (num-rounds passes) instead of averaging, and
--workflow fedeval only evaluates the initial model (or --initial-checkpoint) at every site.
"""

import argparse
import json
from pathlib import Path

from hpcflare.data.synthetic import tiny_mlp
from hpcflare.recipe import CrossSiteEvalRecipe, CyclicRecipe, FedEvalRecipe, job_cli

HERE = Path(__file__).resolve().parent
WORKFLOWS = {"cross-site": CrossSiteEvalRecipe, "cyclic": CyclicRecipe, "fedeval": FedEvalRecipe}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=4, rounds=5)
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="cross-site")
    parser.add_argument("--initial-checkpoint", default=None)
    args = parser.parse_args()
    if args.workflow == "fedeval":
        args.num_rounds = 1
    recipe = WORKFLOWS[args.workflow](
        name=f"{args.workflow}-torch",
        model=tiny_mlp(),
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=f"--n-sites {args.n_clients}",
        initial_checkpoint=args.initial_checkpoint,
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    run.get_result()
    root = run.job_dir.root
    if args.workflow == "cross-site":
        matrix = json.loads((root / "cross_site" / "matrix.json").read_text())
        sites = sorted(next(iter(matrix.values())))
        print(
            f"accuracy of each model (rows) on each site's data (columns); {root / 'cross_site' / 'matrix.json'}"
        )
        print(f"{'model':<10}" + "".join(f"{s:>9}" for s in sites))
        for owner, row in sorted(matrix.items()):
            print(f"{owner:<10}" + "".join(f"{row[s]['accuracy']:>9.3f}" for s in sites))
    elif args.workflow == "fedeval":
        print(f"evaluation of the model on each site ({root / 'models' / 'evaluation.json'}):")
        print(json.loads((root / "models" / "evaluation.json").read_text()))
    else:
        print(f"result model {run.job_dir.result_model_path}")


if __name__ == "__main__":
    main()
