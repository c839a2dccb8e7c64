"""swarm-torch: swarm learning (sites aggregate in turn, the server only manages) of a tiny MLP over 8 sites holding non-IID shards of a synthetic 10-class task.

    python recipes/swarm-torch/job.py [--env local|sim|mpi|slurm] [--n-clients 8] [--num-rounds 20]
                                       [--split noniid|iid] [--local-epochs 2] [--lr 0.05]
"""

import argparse
from pathlib import Path

from hpcflare.data.synthetic import accuracy, holdout_set, tiny_mlp
from hpcflare.env import ENV_NAMES, make_env
from hpcflare.recipe import SwarmRecipe
from hpcflare.recipe.model_io import load_into

HERE = Path(__file__).resolve().parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=ENV_NAMES, default="local")
    parser.add_argument("--nodes", type=int, default=2, help="slurm: nodes")
    parser.add_argument("--n-clients", type=int, default=8)
    parser.add_argument("--num-rounds", type=int, default=20)
    parser.add_argument("--split", choices=["iid", "noniid"], default="noniid")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--job-root", default="jobs")


def train_args(args: argparse.Namespace) -> str:
    return (f"--n-sites {args.n_clients} --split {args.split} --local-epochs {args.local_epochs} "
            f"--lr {args.lr}")


def build(args: argparse.Namespace, **recipe_kwargs) -> SwarmRecipe:
    return SwarmRecipe(name="swarm-torch", model=tiny_mlp(), min_clients=args.n_clients,
                       num_rounds=args.num_rounds, train_script=HERE / "client.py", train_args=train_args(args),
                       **recipe_kwargs)


def run(recipe, args: argparse.Namespace) -> float:
    result = recipe.execute(make_env(args.env, args.job_root, args.nodes)).get_result()
    net = load_into(tiny_mlp(), result)
    acc = accuracy(net, *holdout_set())
    print(f"result model {result}: test accuracy {acc:.3f}")
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    arguments = parser.parse_args()
    run(build(arguments), arguments)
