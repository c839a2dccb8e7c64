"""Which GPU a rank uses: each client rank its own device of the node, the server and relays none.

Slurm describes a step's GPUs in ``CUDA_VISIBLE_DEVICES``: with ``--gpus-per-task=1`` each task already sees
only its own, which is kept as it is; with ``--gres=gpu:N`` (or ``--gpus-per-node``) every task of the node
sees all N, and a client rank takes device ``SLURM_LOCALID mod N`` (MPI launchers: their local-rank
variable), so the clients of a node spread over its GPUs. Aggregation runs on the CPU, so the server and
relays get none (``CUDA_VISIBLE_DEVICES=""``) unless ``HPCFLARE_SERVER_GPU=1``.
"""

from __future__ import annotations

from collections.abc import Mapping

from hpcflare.runtime.cluster.ranks import RoleKind

LOCAL_RANK_VARS = (
    "SLURM_LOCALID",
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMI_LOCAL_RANK",
    "HPCFLARE_RANK",
)
"""Node-local rank, from the launcher: srun, MPICH/hydra, Open MPI, PMI, or a site agent's local launch of
several tasks on one machine (federation.rankwrap)."""


def local_rank(env: Mapping[str, str]) -> int | None:
    for var in LOCAL_RANK_VARS:
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return None


def plan_devices(role: RoleKind, env: Mapping[str, str]) -> tuple[str | None, str]:
    """(the CUDA_VISIBLE_DEVICES this rank should use, or None to leave it; why, for the log)."""
    visible_var = env.get("CUDA_VISIBLE_DEVICES")
    if visible_var is None or not visible_var.strip():
        return None, "no GPUs allocated"
    visible = [d.strip() for d in visible_var.split(",") if d.strip()]
    if role in (RoleKind.SERVER, RoleKind.RELAY):
        if env.get("HPCFLARE_SERVER_GPU") == "1":
            return None, f"{role} keeps GPUs {visible_var} (HPCFLARE_SERVER_GPU=1)"
        return (
            "",
            f"{role} aggregates on the CPU: GPUs {visible_var} hidden (HPCFLARE_SERVER_GPU=1 keeps them)",
        )
    if role != RoleKind.CLIENT or len(visible) <= 1:
        return None, f"uses GPU {visible_var}" if visible else "no GPUs allocated"
    rank = local_rank(env)
    if rank is None:
        return None, f"sees GPUs {visible_var} (no node-local rank variable to choose one)"
    device = visible[rank % len(visible)]
    return device, f"uses GPU {device} of {visible_var} (node-local rank {rank})"
