"""How the ranks of one job find each other: the server and relays publish where they listen, others look it up.

Two implementations of one small contract (:class:`Rendezvous`), picked by name from :data:`RENDEZVOUS`:

- ``fs`` (:class:`FileRendezvous`): ``<job_dir>/rendezvous/<name>.json`` on the shared filesystem, written
  atomically under a file lock and tagged with the job's *incarnation*, so a requeued job never reads the
  address of its previous life;
- ``mpi`` (:class:`MpiRendezvous`): rank 0 broadcasts the server's address over MPI_COMM_WORLD
  (non-blocking, with a deadline). Only the server can be found this way; relays need ``fs``.

The server always publishes to the file as well (``hpcflare job status``, resumed jobs and late clients read it).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hpcflare import errors
from hpcflare.fileio import atomic_write_json
from hpcflare.job import JobConfig
from hpcflare.runtime.cluster.ranks import relay_ranks, tasks_per_node

SERVER = "server"
_ADDR_BYTES = 512
_POLL_S = 0.2


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A published rank: its name (server, relay-N), address host:port, and what else it announced."""

    name: str
    address: str
    incarnation: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def node(self) -> str:
        return str(self.info.get("node", ""))


def incarnation() -> str:
    """Identifies one life of a job: a requeued Slurm job gets a new one."""
    if os.environ.get("HPCFLARE_INCARNATION"):
        return os.environ["HPCFLARE_INCARNATION"]
    if "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    return ""


def server_matches(server_incarnation: object) -> bool:
    """Is a published endpoint from the life of the job this rank belongs to (not a previous one)?"""
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


class Rendezvous(abc.ABC):
    """The contract: publish where a named rank listens; look a name up, waiting up to a deadline."""

    kind: str = ""

    @abc.abstractmethod
    def publish(self, name: str, address: str, incarnation: str, **info: Any) -> None: ...

    @abc.abstractmethod
    def lookup(self, name: str, timeout: float) -> Endpoint:
        """The endpoint published as ``name`` by this life of the job; RendezvousTimeoutError after ``timeout``."""


class FileRendezvous(Rendezvous):
    kind = "fs"

    def __init__(self, directory: Path, lock_timeout: float = 60.0) -> None:
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def publish(self, name: str, address: str, incarnation: str, **info: Any) -> None:
        record = {
            "address": address,
            "name": name,
            "incarnation": incarnation,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            **info,
        }
        try:
            with FileLock(str(self.directory / f"{name}.lock"), timeout=self.lock_timeout):
                atomic_write_json(self.path(name), record)
        except Timeout:
            raise errors.RendezvousTimeoutError(
                f"{self.directory / name}.lock held by another process for settings.rendezvous_timeout="
                f"{self.lock_timeout:g}s; is another server of this job running?"
            ) from None

    def read(self, name: str) -> Endpoint | None:
        """The endpoint if it is published by this life of the job, else None (no waiting)."""
        try:
            record = json.loads(self.path(name).read_text())
            if not isinstance(record, dict) or not server_matches(record.get("incarnation")):
                return None
            return Endpoint(name, str(record["address"]), str(record.get("incarnation") or ""), record)
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def lookup(self, name: str, timeout: float) -> Endpoint:
        deadline = time.monotonic() + timeout
        while True:
            endpoint = self.read(name)
            if endpoint is not None:
                return endpoint
            if time.monotonic() >= deadline:
                raise errors.RendezvousTimeoutError(
                    f"no {name} address in {self.path(name)} after settings.rendezvous_timeout={timeout:g}s; "
                    f"did the {name} rank start? (see logs/{name}.log)"
                )
            time.sleep(_POLL_S)


class MpiRendezvous(Rendezvous):
    """Rank 0 (the server) publishes by broadcasting; every other rank's lookup receives the broadcast."""

    kind = "mpi"

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout  # how long the broadcast root waits for every rank to take part

    def publish(self, name: str, address: str, incarnation: str, **info: Any) -> None:
        self._check(name)
        self._bcast(address, self.timeout)

    def lookup(self, name: str, timeout: float) -> Endpoint:
        self._check(name)
        return Endpoint(name, self._bcast(None, timeout), incarnation())

    @staticmethod
    def _check(name: str) -> None:
        if name != SERVER:
            raise errors.ConfigError(
                f"only the server's address travels over MPI, not {name!r}: use rendezvous='fs'"
            )

    @staticmethod
    def _bcast(address: str | None, timeout: float) -> str:
        comm = import_mpi(timeout).COMM_WORLD
        buf = bytearray(_ADDR_BYTES)
        if comm.Get_rank() == 0:
            data = (address or "").encode()
            buf[: len(data)] = data
        request = comm.Ibcast(buf, root=0)
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                request.Cancel()
                raise errors.RendezvousTimeoutError(
                    f"no server address over MPI within settings.rendezvous_timeout={timeout:g}s"
                )
            time.sleep(0.05)
        return bytes(buf).rstrip(b"\x00").decode()


MPI_INIT_DEADLINE_SIGNAL = signal.SIGALRM
"""What ends a rank whose MPI initialisation outlives settings.rendezvous_timeout (see :func:`import_mpi`)."""


def import_mpi(timeout: float) -> Any:
    """mpi4py's MPI module. MPI_Init runs on import and waits in srun's PMI exchange, in C, holding the GIL: when
    another rank of the step died there (seen: Slurm's pmi2 plugin refusing a split message), the rest wait for
    good. A plain alarm bounds that wait: past ``timeout`` the rank is killed by SIGALRM (exit 142, explained by
    `hpcflare exit-codes 142`) instead of holding its allocation until the time limit."""
    if "mpi4py.MPI" in sys.modules or threading.current_thread() is not threading.main_thread():
        from mpi4py import MPI  # already initialised, or not ours to time (alarms belong to the main thread)

        return MPI
    seconds = max(1, math.ceil(timeout))
    sys.stderr.write(f"[hpcflare] initialising MPI (deadline {seconds}s, settings.rendezvous_timeout)\n")
    sys.stderr.flush()
    previous = signal.signal(MPI_INIT_DEADLINE_SIGNAL, signal.SIG_DFL)
    signal.alarm(seconds)
    try:
        from mpi4py import MPI  # only MPI jobs need mpi4py (an optional dependency for everyone else)
    finally:
        signal.alarm(0)
        signal.signal(MPI_INIT_DEADLINE_SIGNAL, previous)
    return MPI


RENDEZVOUS: dict[str, type[Rendezvous]] = {"fs": FileRendezvous, "mpi": MpiRendezvous}


def relays_on_this_node(config: JobConfig) -> list[str]:
    """The relays the step's layout (ranks.relay_ranks over SLURM_STEP_TASKS_PER_NODE) starts on this node."""
    per_node, node_id = tasks_per_node(os.environ), os.environ.get("SLURM_NODEID", "")
    world = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or ""
    if (
        not per_node
        or not node_id.isdigit()
        or int(node_id) >= len(per_node)
        or (world.isdigit() and int(world) != sum(per_node))
    ):
        return []  # not a Slurm step whose layout role_for_rank used
    start = sum(per_node[: int(node_id)])
    hosts = relay_ranks(config.relays, per_node)
    return [
        config.relay_names()[i]
        for i, rank in enumerate(hosts)
        if start <= rank < start + per_node[int(node_id)]
    ]


def choose_relay(
    rendezvous: FileRendezvous, config: JobConfig, index: int, timeout: float
) -> Endpoint | None:
    """A relay on this node if one announced itself here, else relay (index mod R) by fan-out.

    Waits up to ``timeout`` for the chosen relay to announce itself; None = connect to the server directly.
    """
    names = config.relay_names()
    node = os.environ.get("SLURMD_NODENAME", "")
    deadline = time.monotonic() + timeout
    placed = relays_on_this_node(config)  # in a Slurm step the layout says which relays start on this node
    while True:
        announced = {name: ep for name in names if (ep := rendezvous.read(name)) is not None}
        local = placed or [n for n in names if node and n in announced and announced[n].node == node]
        choice = local[index % len(local)] if local else names[index % len(names)]
        if choice in announced:
            return announced[choice]
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_S)
