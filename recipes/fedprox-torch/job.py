"""fedprox-torch: FedProx (FedAvg + a proximal term in the client loss) of a tiny MLP on non-IID shards.

python recipes/fedprox-torch/job.py [--env local|sim|mpi|slurm] [--n-clients 8] [--num-rounds 20]
                             [--split noniid|iid] [--local-epochs 2] [--lr 0.05]
"""

import argparse
from pathlib import Path

from hpcflare.recipe import FedAvgRecipe
from hpcflare.recipe.synthetic_cli import add_arguments as add_common
from hpcflare.recipe.synthetic_cli import common, run

HERE = Path(__file__).resolve().parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, privacy=("secagg", "he"))
    parser.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight")


def build(args: argparse.Namespace, **recipe_kwargs) -> FedAvgRecipe:
    return FedAvgRecipe(
        name="fedprox-torch", **common(args, HERE / "client.py", f"--mu {args.mu}"), **recipe_kwargs
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    arguments = parser.parse_args()
    run(build(arguments), arguments)
