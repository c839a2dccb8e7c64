"""Where a job runs: SimEnv (threads), LocalEnv (processes), MpiEnv (mpiexec), SlurmEnv (submitit/Slurm), ProdEnv
(a federation's standing server)."""

import warnings
from pathlib import Path
from typing import Any

from hpcflare.env.api import Env, Run, sites_from
from hpcflare.env.local import LocalEnv
from hpcflare.env.prod import ProdEnv
from hpcflare.env.sim import SimEnv
from hpcflare.env.slurm import MpiEnv, SlurmEnv, SubmititEnv
from hpcflare.errors import ConfigError

ENV_NAMES = ("local", "sim", "mpi", "slurm", "prod")


def make_env(
    name: str,
    job_root: str | Path = "jobs",
    nodes: int = 2,
    partition: str | None = None,
    clients_per_rank: int | str | None = None,
    startup_kit: str | None = None,
    server: str | None = None,
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
    if name == "prod":
        if not startup_kit:
            raise ConfigError(
                "--env prod submits to a standing server: pass --startup-kit ADMIN_KIT [--server HOST:PORT]"
            )
        return ProdEnv(startup_kit, server, job_root=job_root)
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
