"""Role by rank inside one allocation: rank 0 is the server, R ranks spread over the nodes relays, the rest
client ranks (each one site, or clients_per_rank sites as virtual clients).

Used by every launcher that starts all ranks at once (srun, mpiexec, submitit). How ranks then find each
other is hpcflare.runtime.cluster.rendezvous; what each role runs is hpcflare.runtime.launch.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

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
    """The site, relay or client rank name."""
    sites: tuple[str, ...] = ()
    """A client rank's sites (one, unless clients_per_rank > 1)."""


RANK_ENV, WORLD_ENV = "HPCFLARE_RANK", "HPCFLARE_WORLD"
"""A task's rank and the task count, set by a launcher that starts several tasks itself (a site agent's local
launcher); they win over the scheduler's."""


def detect_rank() -> RankInfo:
    """Rank/world from the launcher's or scheduler's environment (ours, Slurm, then MPI launchers)."""
    for rank_var, size_var, source in (
        (RANK_ENV, WORLD_ENV, "explicit"),
        ("SLURM_PROCID", "SLURM_NTASKS", "slurm"),
        ("PMI_RANK", "PMI_SIZE", "mpi"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "mpi"),
    ):
        if rank_var in os.environ and size_var in os.environ:
            return RankInfo(int(os.environ[rank_var]), int(os.environ[size_var]), source)
    raise errors.ConfigError(
        "cannot tell this process's rank: none of SLURM_PROCID/PMI_RANK/OMPI_COMM_WORLD_RANK "
        "is set; run under srun/mpiexec or pass --role explicitly"
    )


def tasks_per_node(env: Mapping[str, str]) -> list[int] | None:
    """Slurm's SLURM_STEP_TASKS_PER_NODE ('5,1(x2)' -> [5, 1, 1]); None outside a Slurm step."""
    text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not text:
        return None
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            return None
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def relay_ranks(relays: int, per_node: list[int] | None) -> list[int]:
    """The ranks that host the relays, spread over the nodes (Slurm's block distribution numbers ranks node by
    node): relay k on node k x nodes / relays, so each relay has clients on its own node (they pick a relay
    on their node, see rendezvous.choose_relay); without a node layout, ranks 1..relays."""
    if not relays:
        return []
    if not per_node or len(per_node) < 2:
        return list(range(1, relays + 1))
    nodes = len(per_node)
    starts = [sum(per_node[:n]) for n in range(nodes)]
    free = [list(range(starts[n] + (1 if n == 0 else 0), starts[n] + per_node[n])) for n in range(nodes)]
    chosen: list[int] = []
    for k in range(relays):
        target = k * nodes // relays if relays <= nodes else k % nodes
        for step in range(nodes):  # that node is full: the next one with a free rank
            node = (target + step) % nodes
            if free[node]:
                chosen.append(free[node].pop(0))
                break
    return sorted(chosen)


def role_for_rank(rank: int, world: int, config: JobConfig, per_node: list[int] | None = None) -> Role:
    """Rank 0 is the server, the relays' ranks are spread over the nodes (``per_node``: tasks per node, from
    :func:`tasks_per_node`), the other ranks are the job's clients in job.yaml order. Every rank computes the
    same table from the same step environment."""
    relays, units = config.relays, list(config.client_units().items())
    needed = 1 + relays + len(units)
    least = 1 + relays + -(-config.min_clients // config.per_rank)
    if world < least:
        per = f" ({config.per_rank} sites per client rank)" if config.per_rank > 1 else ""
        raise errors.ConfigError(
            f"{world} ranks cannot hold 1 server + {relays} relays + min_clients={config.min_clients}"
            f"{per}; request at least {least} tasks ({needed} for every client)"
        )
    if rank == 0:
        return Role(RoleKind.SERVER)
    hosts = relay_ranks(relays, per_node if per_node and sum(per_node) == world else None)
    if rank in hosts:
        return Role(RoleKind.RELAY, config.relay_names()[hosts.index(rank)])
    index = rank - 1 - sum(1 for h in hosts if h < rank)
    if index < len(units):
        return Role(RoleKind.CLIENT, units[index][0], tuple(units[index][1]))
    return Role(RoleKind.IDLE)
