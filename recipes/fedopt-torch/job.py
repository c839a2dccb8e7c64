"""fedopt-torch: FedOpt (server-side SGD with momentum, or Adam, on the mean update) of a tiny MLP.

The sites run fedavg-torch's client.py unchanged: the optimizer is on the server.

    python recipes/fedopt-torch/job.py [--env local|sim|mpi|slurm] [--n-clients 8] [--num-rounds 20]
                                 [--split noniid|iid] [--local-epochs 2] [--lr 0.05]
"""

import argparse
from pathlib import Path

from hpcflare.recipe import FedOptRecipe
from hpcflare.recipe.synthetic_cli import add_arguments as add_common
from hpcflare.recipe.synthetic_cli import common, run

FEDAVG_CLIENT = Path(__file__).resolve().parents[1] / "fedavg-torch" / "client.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, privacy=("secagg",))  # a server optimizer cannot run on ciphertexts
    parser.add_argument("--server-optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.5)


def build(args: argparse.Namespace, **recipe_kwargs) -> FedOptRecipe:
    return FedOptRecipe(
        name="fedopt-torch",
        optimizer=args.server_optimizer,
        lr=args.server_lr,
        momentum=args.server_momentum,
        **common(args, FEDAVG_CLIENT),
        **recipe_kwargs,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    arguments = parser.parse_args()
    run(build(arguments), arguments)
