"""Role by rank inside one allocation: rank 0 is the server, the next R ranks relays, the rest clients.

Used by every launcher that starts all ranks at once (srun, mpiexec, submitit). How ranks then find each
other is hpcflare.runtime.rendezvous; what each role runs is hpcflare.runtime.launch.
"""

from __future__ import annotations

import dataclasses
import os

from hpcflare import errors
from hpcflare.enums import NamedEnum
from hpcflare.job import JobConfig


class RoleKind(NamedEnum):
    SERVER = "server"
    RELAY = "relay"
    CLIENT = "client"
    IDLE = "idle"  # more ranks than the job has sites: exits at once


@dataclasses.dataclass(frozen=True)
class RankInfo:
    rank: int
    world: int
    source: str  # slurm | mpi | submitit | explicit


@dataclasses.dataclass(frozen=True)
class Role:
    kind: RoleKind
    site: str = ""


def detect_rank() -> RankInfo:
    """Rank/world from the scheduler's environment (Slurm first, then MPI launchers)."""
    for rank_var, size_var, source in (("SLURM_PROCID", "SLURM_NTASKS", "slurm"),
                                       ("PMI_RANK", "PMI_SIZE", "mpi"),
                                       ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "mpi")):
        if rank_var in os.environ and size_var in os.environ:
            return RankInfo(int(os.environ[rank_var]), int(os.environ[size_var]), source)
    raise errors.ConfigError("cannot tell this process's rank: none of SLURM_PROCID/PMI_RANK/OMPI_COMM_WORLD_RANK "
                             "is set; run under srun/mpiexec or pass --role explicitly")


def role_for_rank(rank: int, world: int, config: JobConfig) -> Role:
    relays = config.relays
    needed = 1 + relays + len(config.clients)
    if world < 1 + relays + config.min_clients:
        raise errors.ConfigError(f"{world} ranks cannot hold 1 server + {relays} relays + min_clients={config.min_clients}; "
                                 f"request at least {1 + relays + config.min_clients} tasks ({needed} for every client)")
    if rank == 0:
        return Role(RoleKind.SERVER)
    if rank <= relays:
        return Role(RoleKind.RELAY, config.relay_names()[rank - 1])
    index = rank - 1 - relays
    if index < len(config.clients):
        return Role(RoleKind.CLIENT, config.clients[index])
    return Role(RoleKind.IDLE)
