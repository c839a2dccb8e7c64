"""swarm-torch: swarm learning (sites aggregate in turn, the server only manages) of a tiny MLP.

The sites run fedavg-torch's client.py unchanged.

    python recipes/swarm-torch/job.py [--env local|sim|mpi|slurm] [--n-clients 8] [--num-rounds 20]
                                 [--split noniid|iid] [--local-epochs 2] [--lr 0.05]
"""

import argparse
from pathlib import Path

from hpcflare.recipe import SwarmRecipe
from hpcflare.recipe.synthetic_cli import add_arguments as add_common
from hpcflare.recipe.synthetic_cli import common, run

FEDAVG_CLIENT = Path(__file__).resolve().parents[1] / "fedavg-torch" / "client.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)


def build(args: argparse.Namespace, **recipe_kwargs) -> SwarmRecipe:
    return SwarmRecipe(name="swarm-torch", **common(args, FEDAVG_CLIENT), **recipe_kwargs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    arguments = parser.parse_args()
    run(build(arguments), arguments)
