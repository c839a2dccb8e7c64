"""Command-line plumbing shared by the torch recipes on the synthetic task (recipes/*-torch/job.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcflare.data.synthetic import accuracy, holdout_set, tiny_mlp
from hpcflare.recipe import job_cli
from hpcflare.recipe.model_io import load_into


def add_arguments(parser: argparse.ArgumentParser, privacy: tuple[str, ...] = ()) -> None:
    """The torch recipes' flags; ``privacy``: what the recipe's strategy can honour (see job_cli)."""
    job_cli.add_job_arguments(parser, n_clients=8, rounds=20, privacy=privacy)
    parser.add_argument("--split", choices=["iid", "noniid"], default="noniid")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)


def common(args: argparse.Namespace, train_script: Path, extra_train_args: str = "") -> dict[str, Any]:
    """Recipe arguments every torch recipe shares: model, sites, rounds, the client's flags."""
    train_args = (
        f"--n-sites {args.n_clients} --split {args.split} --local-epochs {args.local_epochs} --lr {args.lr}"
    )
    return {
        "model": tiny_mlp(),
        **job_cli.recipe_arguments(args),
        "train_script": train_script,
        "train_args": f"{train_args} {extra_train_args}".strip(),
    }


def run(recipe: Any, args: argparse.Namespace) -> float | None:
    """Execute in the chosen env (or export / dry-run), then score the result model on the held-out set."""
    job = job_cli.execute(recipe, args)
    if job is None:
        return None
    result = job_cli.plain_result(job, args)
    acc = accuracy(load_into(tiny_mlp(), result), *holdout_set())
    print(f"result model {result}: test accuracy {acc:.3f}")
    return acc
