"""Command-line plumbing shared by the torch recipes on the synthetic task (recipes/*-torch/job.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcflare.data.synthetic import accuracy, holdout_set, tiny_mlp
from hpcflare.env import ENV_NAMES, make_env
from hpcflare.recipe.model_io import load_into

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=ENV_NAMES, default="local")
    parser.add_argument("--nodes", type=int, default=2, help="slurm: nodes")
    parser.add_argument("--n-clients", type=int, default=8)
    parser.add_argument("--min-clients", type=int, default=None, help="default: every client")
    parser.add_argument("--num-rounds", "--rounds", type=int, default=20)
    parser.add_argument("--profile", default="auto", help="settings profile (configs/*.yaml); auto: by client count")
    parser.add_argument("--split", choices=["iid", "noniid"], default="noniid")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--job-root", default="jobs")


def common(args: argparse.Namespace, train_script: Path, extra_train_args: str = "") -> dict[str, Any]:
    """Recipe arguments every torch recipe shares: model, sites, rounds, the client's flags."""
    train_args = f"--n-sites {args.n_clients} --split {args.split} --local-epochs {args.local_epochs} --lr {args.lr}"
    return {"model": tiny_mlp(), "min_clients": args.min_clients or args.n_clients, "n_clients": args.n_clients,
            "num_rounds": args.num_rounds, "settings_profile": args.profile,
            "train_script": train_script, "train_args": f"{train_args} {extra_train_args}".strip()}


def run(recipe: Any, args: argparse.Namespace) -> float:
    """Execute in the chosen env, then score the result model on the held-out set."""
    result = recipe.execute(make_env(args.env, args.job_root, args.nodes)).get_result()
    acc = accuracy(load_into(tiny_mlp(), result), *holdout_set())
    print(f"result model {result}: test accuracy {acc:.3f}")
    return acc
