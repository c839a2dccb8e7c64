"""The flags every recipes/*/job.py takes, and what they do: one place, so the recipes cannot drift apart.

    --env local|sim|mpi|slurm|prod   --n-clients N   --min-clients M   --rounds R (--num-rounds)   --profile P
    --clients-per-rank K|auto   --export-only   --job-root DIR   --privacy secagg|he (FedAvg-family recipes)   Slurm (--env slurm): --nodes --partition --time --account --dry-run
    a standing server (--env prod): --startup-kit ADMIN_KIT --server HOST:PORT

NVFlare's spellings (``--n_clients``, ``--num_rounds``, ``--job_root``) are accepted too, so an NVFlare
job.py's command line keeps working.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hpcflare.env import ENV_NAMES, SlurmEnv, make_env
from hpcflare.env.api import Run
from hpcflare.exitcodes import install_error_hook

UNIFORM_FLAGS = (
    "--env",
    "--n-clients",
    "--min-clients",
    "--rounds",
    "--num-rounds",
    "--profile",
    "--clients-per-rank",
    "--export-only",
    "--job-root",
    "--nodes",
    "--partition",
    "--time",
    "--account",
    "--dry-run",
    "--startup-kit",
    "--server",
)


def add_job_arguments(
    parser: argparse.ArgumentParser, n_clients: int = 2, rounds: int = 3, env: str = "local"
) -> None:
    install_error_hook("-v" in sys.argv or "--verbose" in sys.argv)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks of expected failures too"
    )
    parser.add_argument("--env", choices=ENV_NAMES, default=env)
    parser.add_argument("--n-clients", "--n_clients", dest="n_clients", type=int, default=n_clients)
    parser.add_argument(
        "--min-clients",
        "--min_clients",
        dest="min_clients",
        type=int,
        default=None,
        help="default: every client",
    )
    parser.add_argument(
        "--rounds", "--num-rounds", "--num_rounds", dest="num_rounds", type=int, default=rounds
    )
    parser.add_argument(
        "--profile", default="auto", help="settings profile (configs/*.yaml); auto: by client count"
    )
    parser.add_argument(
        "--clients-per-rank",
        dest="clients_per_rank",
        default=None,
        type=_per_rank,
        help="sites per client rank (virtual clients in one process); auto: from the cores; "
        "default: the job's (1)",
    )
    parser.add_argument(
        "--export-only", action="store_true", help="write the job directory, print its path, run nothing"
    )
    parser.add_argument("--job-root", "--job_root", dest="job_root", default="jobs")
    parser.add_argument(
        "--privacy",
        choices=("secagg", "he"),
        default=None,
        help="private aggregation for FedAvg-family recipes: masked (secagg) or CKKS-encrypted (he) "
        "updates; see the README's 'Private aggregation'",
    )
    slurm = parser.add_argument_group("Slurm (--env slurm)")
    slurm.add_argument("--nodes", type=int, default=2)
    slurm.add_argument("--partition", default=None)
    slurm.add_argument(
        "--time", default="00:30:00", help="time limit (the job checkpoints and requeues at it)"
    )
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    prod = parser.add_argument_group("A federation's standing server (--env prod)")
    prod.add_argument("--startup-kit", default=None, help="your admin startup kit (hpcflare provision)")
    prod.add_argument("--server", default=None, help="HOST:PORT of the standing server (default: the kit's)")


def _per_rank(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"--clients-per-rank takes a positive integer or 'auto', not {value!r}"
        )
    return count


def recipe_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe keywords these flags set."""
    return {
        "min_clients": args.min_clients or args.n_clients,
        "n_clients": args.n_clients,
        "num_rounds": args.num_rounds,
        "settings_profile": args.profile,
        **({"privacy": {"type": args.privacy}} if getattr(args, "privacy", None) else {}),
    }


def execute(recipe: Any, args: argparse.Namespace) -> Run | None:
    """--export-only / --dry-run, or run the recipe in the chosen Env (None when nothing ran)."""
    if args.export_only:
        print(recipe.export(args.job_root).root)
        return None
    slurm = (
        {"time": args.time, **({"account": args.account} if args.account else {})}
        if args.env == "slurm"
        else {}
    )
    prod = (
        {"startup_kit": getattr(args, "startup_kit", None), "server": getattr(args, "server", None)}
        if args.env == "prod"
        else {}
    )
    env = make_env(
        args.env,
        args.job_root,
        args.nodes,
        args.partition,
        getattr(args, "clients_per_rank", None),
        **prod,
        **slurm,
    )
    if args.dry_run:
        if not isinstance(env, SlurmEnv):
            raise SystemExit("--dry-run shows the sbatch script: use it with --env slurm")
        print(env.dry_run(recipe))
        return None
    return recipe.execute(env)
