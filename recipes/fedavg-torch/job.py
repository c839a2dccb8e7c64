"""fedavg-torch: FedAvg of a tiny MLP over 8 sites holding non-IID shards of a synthetic 10-class task.

python recipes/fedavg-torch/job.py [--env local|sim|mpi|slurm] [--n-clients 8] [--num-rounds 20]
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


def build(args: argparse.Namespace, **recipe_kwargs) -> FedAvgRecipe:
    return FedAvgRecipe(name="fedavg-torch", **common(args, HERE / "client.py"), **recipe_kwargs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    arguments = parser.parse_args()
    run(build(arguments), arguments)
