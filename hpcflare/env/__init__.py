"""Where a job runs: SimEnv (threads in this process), LocalEnv (one OS process per rank, real gRPC)."""

from hpcflare.env.api import Env, Run
from hpcflare.env.local import LocalEnv
from hpcflare.env.sim import SimEnv

__all__ = ["Env", "LocalEnv", "Run", "SimEnv"]
