"""Where a job runs: SimEnv (threads), LocalEnv (processes), MpiEnv (mpiexec), SlurmEnv (submitit/Slurm)."""

from hpcflare.env.api import Env, Run
from hpcflare.env.local import LocalEnv
from hpcflare.env.sim import SimEnv
from hpcflare.env.slurm import MpiEnv, SlurmEnv, SubmititEnv

__all__ = ["Env", "LocalEnv", "MpiEnv", "Run", "SimEnv", "SlurmEnv", "SubmititEnv"]
