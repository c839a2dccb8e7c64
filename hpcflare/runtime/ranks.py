"""Role by rank inside one allocation: rank 0 is the server, the next R ranks relays, the rest clients.

Clients pick a relay on their own node when one announced itself there, else relay (index mod R).

Used by every launcher that starts all ranks at once (srun, mpiexec, submitit). Ranks find the server by
one of two rendezvous paths:

- ``fs``: the server writes ``rendezvous/server.json`` on the shared filesystem (atomic rename, under a
  file lock, tagged with the Slurm incarnation so a requeued job never reads its previous life's address);
- ``mpi``: rank 0 broadcasts its address over MPI_COMM_WORLD (non-blocking, with a deadline).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

from hpcflare import errors
from hpcflare.exitcodes import ExitCode
from hpcflare.job import JobConfig, JobDir

RENDEZVOUS = ("fs", "mpi")
_ADDR_BYTES = 512


@dataclasses.dataclass(frozen=True)
class RankInfo:
    rank: int
    world: int
    source: str  # slurm | mpi | submitit | explicit


@dataclasses.dataclass(frozen=True)
class Role:
    kind: str  # server | relay | client | idle
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
        return Role("server")
    if rank <= relays:
        return Role("relay", config.relay_names()[rank - 1])
    index = rank - 1 - relays
    if index < len(config.clients):
        return Role("client", config.clients[index])
    return Role("idle")


def incarnation() -> str:
    """Identifies one life of a job: a requeued Slurm job gets a new one."""
    if os.environ.get("HPCFLARE_INCARNATION"):
        return os.environ["HPCFLARE_INCARNATION"]
    if "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    return ""


def server_matches(server_incarnation: object) -> bool:
    """Is a rendezvous file's server the one this rank belongs to (not a previous life of the job)?"""
    server_job = os.environ.get("HPCFLARE_SERVER_JOB")
    if server_job:  # separate allocations: any life of the named server job
        return isinstance(server_incarnation, str) and server_incarnation.startswith(f"slurm-{server_job}-")
    mine = incarnation()
    return not mine or server_incarnation == mine


def advertise_host() -> str:
    """The address other nodes use to reach this one (override with HPCFLARE_ADVERTISE_HOST)."""
    explicit = os.environ.get("HPCFLARE_ADVERTISE_HOST")
    if explicit:
        return explicit
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _mpi_bcast_address(address: str | None, timeout: float) -> str:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    buf = bytearray(_ADDR_BYTES)
    if comm.Get_rank() == 0:
        data = (address or "").encode()
        buf[:len(data)] = data
    request = comm.Ibcast(buf, root=0)
    deadline = time.monotonic() + timeout
    while not request.Test():
        if time.monotonic() > deadline:
            request.Cancel()
            raise errors.PeerGoneError(f"no server address over MPI within settings.rendezvous_timeout={timeout:g}s")
        time.sleep(0.05)
    return bytes(buf).rstrip(b"\x00").decode()


def run_rank(job_dir: JobDir, info: RankInfo, rendezvous: str = "fs") -> ExitCode:
    """Start whatever this rank is in the job; return its exit code."""
    from hpcflare.runtime.launch import run_client, run_server

    if rendezvous not in RENDEZVOUS:
        raise errors.ConfigError(f"rendezvous must be one of {RENDEZVOUS}, got {rendezvous!r}")
    config = job_dir.load_config()
    settings = config.load_settings()
    if config.relays and rendezvous == "mpi":
        raise errors.ConfigError("relays find each other through the job directory: use rendezvous='fs' with relays")
    role = role_for_rank(info.rank, info.world, config)
    if role.kind == "server":
        publish = None
        if rendezvous == "mpi":
            def publish(address: str) -> None:
                _mpi_bcast_address(address, settings.rendezvous_timeout)
        return run_server(job_dir, echo=True, host="0.0.0.0", advertise=advertise_host(), on_listening=publish)
    if role.kind == "relay":
        from hpcflare.runtime.relay import run_relay

        return run_relay(job_dir, role.site, host="0.0.0.0", advertise=advertise_host())
    address = None
    if rendezvous == "mpi":
        address = _mpi_bcast_address(None, settings.rendezvous_timeout)
        print(f"[hpcflare] rank {info.rank}: server address {address} from MPI broadcast", flush=True)
    if role.kind == "idle":
        print(f"[hpcflare] rank {info.rank}: no role (job has {len(config.clients)} clients); exiting", flush=True)
        return ExitCode.OK
    return run_client(job_dir, role.site, address=address)
