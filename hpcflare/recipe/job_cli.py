"""The flags every recipes/*/job.py takes, and what they do: one place, so the recipes cannot drift apart.

    --env local|sim|mpi|slurm|prod   --n-clients N   --min-clients M   --rounds R (--num-rounds)   --profile P
    --clients-per-rank K|auto   --export-only   --job-root DIR   --privacy secagg|he (where the strategy can)
    Slurm (--env slurm): --nodes --partition --time --account --dry-run
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
    parser: argparse.ArgumentParser,
    n_clients: int = 2,
    rounds: int = 3,
    privacy: tuple[str, ...] = (),
) -> None:
    """The uniform flags; ``privacy``: the private-aggregation types this recipe's strategy can honour (the
    flag is offered only then). Every recipe runs in LocalEnv unless ``--env`` says otherwise."""
    install_error_hook("-v" in sys.argv or "--verbose" in sys.argv)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks of expected failures too"
    )
    parser.add_argument("--env", choices=ENV_NAMES, default="local")
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
        "--rounds", "--num-rounds", "--num_rounds", dest="num_rounds", type=int, default=rounds, action=_Given
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
    if privacy:
        parser.add_argument(
            "--privacy",
            choices=privacy,
            default=None,
            help="private aggregation: masked (secagg) or CKKS-encrypted (he) updates; see docs/privacy.md",
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


class _Given(argparse.Action):
    """Stores the value and remembers that the flag was given (see :func:`refuse_rounds`)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def refuse_rounds(parser: argparse.ArgumentParser, args: argparse.Namespace, why: str) -> None:
    """End with one line when --rounds was given to a recipe that decides its rounds itself."""
    if getattr(args, "num_rounds_given", False):
        parser.exit(2, f"{parser.prog}: error: --rounds is not used here: {why}\n")


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


def plain_result(run: Run, args: argparse.Namespace) -> Any:
    """The result model's path; for an HE job (whose result is CKKS ciphertext) the model decrypted with a site's
    key, saying so and how to do it by hand."""
    result = run.get_result()
    if getattr(args, "privacy", None) != "he":
        return result
    keys = sorted((run.job_dir.root / "he_keys").glob("*/secret.ctx"))
    command = f"python -m hpcflare.privacy.he decrypt {result} SITE_SECRET_CONTEXT OUT.safetensors"
    if not keys:
        print(f"result model {result} is CKKS ciphertext; a site decrypts it with: {command}")
        return result
    from hpcflare.privacy import he

    plain = result.with_name("global_model.decrypted.safetensors")
    he.main(["decrypt", str(result), str(keys[0]), str(plain)])
    print(f"result model {result} is CKKS ciphertext; decrypted with {keys[0].parent.name}'s key ({command})")
    return plain


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
