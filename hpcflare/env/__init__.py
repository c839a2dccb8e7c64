"""Where a job runs: SimEnv (threads), LocalEnv (processes), MpiEnv (mpiexec), SlurmEnv (submitit/Slurm)."""

import warnings
from pathlib import Path
from typing import Any

from hpcflare.env.api import Env, Run, sites_from
from hpcflare.env.local import LocalEnv
from hpcflare.env.sim import SimEnv
from hpcflare.env.slurm import MpiEnv, SlurmEnv, SubmititEnv

ENV_NAMES = ("local", "sim", "mpi", "slurm")


def make_env(
    name: str,
    job_root: str | Path = "jobs",
    nodes: int = 2,
    partition: str | None = None,
    clients_per_rank: int | str | None = None,
    **slurm_options: Any,
) -> Env:
    """The Env a recipe's ``--env`` flag names (what every recipes/*/job.py offers); ``clients_per_rank``: sites
    per client rank (None: the job's); ``slurm_options``: SlurmEnv's time= and named sbatch options (account=, ...)."""
    if name == "local":
        return LocalEnv(job_root=job_root, clients_per_rank=clients_per_rank)
    if name == "sim":
        return SimEnv(job_root=job_root, clients_per_rank=clients_per_rank)
    if name == "mpi":
        return MpiEnv(job_root=job_root, clients_per_rank=clients_per_rank)
    if name == "slurm":
        return SlurmEnv(
            nodes=nodes,
            partition=partition,
            job_root=job_root,
            clients_per_rank=clients_per_rank,
            **slurm_options,
        )
    raise ValueError(f"unknown env {name!r}; use one of {ENV_NAMES}")


def PocEnv(
    num_clients: int | None = None,
    clients: list[str] | None = None,
    workspace_root: str | Path = "jobs",
    **ignored: Any,
) -> LocalEnv:
    """NVFlare's PocEnv (every site a process on one machine) is hpcflare's LocalEnv."""
    warnings.warn(
        "PocEnv runs as hpcflare's LocalEnv (each site its own process on this machine)"
        + (f"; ignored NVFlare-only arguments {sorted(ignored)}" if ignored else ""),
        stacklevel=2,
    )
    env = LocalEnv(job_root=workspace_root)
    env.sites = sites_from(num_clients, clients)
    return env


def ProdEnv(
    startup_kit_location: str | None = None,
    login_timeout: float | None = None,
    username: str | None = None,
    **slurm_args: Any,
) -> SlurmEnv:
    """NVFlare's ProdEnv (submit to a running deployment) is hpcflare's SlurmEnv (submit a batch job): pass
    SlurmEnv's arguments (nodes=, partition=, time=, ...); startup kits come from ``hpcflare provision`` and the
    recipe's kits_dir instead of an admin login."""
    warnings.warn(
        "ProdEnv runs as hpcflare's SlurmEnv("
        + ", ".join(f"{k}={v!r}" for k, v in slurm_args.items())
        + "): the job is submitted to Slurm; NVFlare's admin login arguments are not used",
        stacklevel=2,
    )
    return SlurmEnv(**slurm_args)


__all__ = [
    "ENV_NAMES",
    "Env",
    "LocalEnv",
    "MpiEnv",
    "PocEnv",
    "ProdEnv",
    "Run",
    "SimEnv",
    "SlurmEnv",
    "SubmititEnv",
    "make_env",
]
