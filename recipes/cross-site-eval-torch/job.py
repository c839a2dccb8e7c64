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
from hpcflare.env import ENV_NAMES, make_env
from hpcflare.recipe import CrossSiteEvalRecipe, CyclicRecipe, FedEvalRecipe

HERE = Path(__file__).resolve().parent
WORKFLOWS = {"cross-site": CrossSiteEvalRecipe, "cyclic": CyclicRecipe, "fedeval": FedEvalRecipe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=ENV_NAMES, default="local")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--n-clients", type=int, default=4)
    parser.add_argument("--num-rounds", type=int, default=5)
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="cross-site")
    parser.add_argument("--initial-checkpoint", default=None)
    parser.add_argument("--job-root", default="jobs")
    args = parser.parse_args()
    recipe = WORKFLOWS[args.workflow](
        name=f"{args.workflow}-torch", model=tiny_mlp(), min_clients=args.n_clients,
        num_rounds=1 if args.workflow == "fedeval" else args.num_rounds,
        train_script=HERE / "client.py", train_args=f"--n-sites {args.n_clients}",
        initial_checkpoint=args.initial_checkpoint)
    run = recipe.execute(make_env(args.env, args.job_root, args.nodes))
    run.get_result()
    root = run.job_dir.root
    if args.workflow == "cross-site":
        matrix = json.loads((root / "cross_site" / "matrix.json").read_text())
        sites = sorted(next(iter(matrix.values())))
        print("accuracy of each model (rows) on each site's data (columns)")
        print(f"{'model':<10}" + "".join(f"{s:>9}" for s in sites))
        for owner, row in sorted(matrix.items()):
            print(f"{owner:<10}" + "".join(f"{row[s]['accuracy']:>9.3f}" for s in sites))
    elif args.workflow == "fedeval":
        print(json.loads((root / "models" / "evaluation.json").read_text()))
    else:
        print(f"result model {run.job_dir.result_model_path}")


if __name__ == "__main__":
    main()
