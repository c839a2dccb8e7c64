"""Where a job runs: SimEnv (threads), LocalEnv (processes), MpiEnv (mpiexec), SlurmEnv (submitit/Slurm)."""

from hpcflare.env.api import Env, Run
from hpcflare.env.local import LocalEnv
from hpcflare.env.sim import SimEnv
from hpcflare.env.slurm import MpiEnv, SlurmEnv, SubmititEnv

ENV_NAMES = ("local", "sim", "mpi", "slurm")


def make_env(name: str, job_root: str = "jobs", nodes: int = 2, partition: str | None = None) -> Env:
    """The Env a recipe's ``--env`` flag names (what every recipes/*/job.py offers)."""
    if name == "local":
        return LocalEnv(job_root=job_root)
    if name == "sim":
        return SimEnv(job_root=job_root)
    if name == "mpi":
        return MpiEnv(job_root=job_root)
    if name == "slurm":
        return SlurmEnv(nodes=nodes, partition=partition, job_root=job_root)
    raise ValueError(f"unknown env {name!r}; use one of {ENV_NAMES}")


__all__ = ["ENV_NAMES", "Env", "LocalEnv", "MpiEnv", "Run", "SimEnv", "SlurmEnv", "SubmititEnv", "make_env"]
