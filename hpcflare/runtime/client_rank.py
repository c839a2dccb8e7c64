"""A client rank hosting several sites as virtual clients: one process, one link upstream, one model copy.

Each site runs its own, unmodified training script in a thread of the rank, with its own Client API
context (site name, task, tracking). The sites talk to a rank-local host through the in-process transport;
that host is a relay without a network port (:class:`ClientRankHost`): it registers its sites with the
server, pulls each round's model once (or reads the staged file once, with staging) into a memory file its
sites map copy-on-write, validates and folds their results (their own arrays, no copies) into one partial
aggregate and sends that up, so the server's per-round work grows with ranks, not sites.
Strategies that cannot take partial aggregates keep virtual clients with their own gRPC link each.

A site whose script raises, exits or never calls ``flare.init()`` fails alone: the others go on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from hpcflare import errors
from hpcflare.exitcodes import ExitCode, exit_for
from hpcflare.job import FINAL_STATES, JobConfig, JobDir, whole_number
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime import site_output
from hpcflare.runtime.cluster import staging
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.round_host import HostPhase, RoundHost
from hpcflare.runtime.relay import RELAY_ROUND_FRACTION, Relay
from hpcflare.runtime.script_runner import run_client, script_path
from hpcflare.transport.api import Peer, Rpc, Task
from hpcflare.transport.inproc import InprocTransport
from hpcflare.transport.model_files import map_tensors

RANK_ROUND_FRACTION = RELAY_ROUND_FRACTION - 0.1
"""A client rank closes its part of a round at this fraction of settings.round_timeout, so its partial
still reaches a relay (which closes at RELAY_ROUND_FRACTION) or the server in time."""


class ClientRankHost(Relay):
    """A relay for the sites of one client rank, reached in-process; it listens on no port."""

    role = "client rank"
    listens = False
    upstream_in_process = True
    round_fraction = RANK_ROUND_FRACTION

    def __init__(
        self, job_dir: JobDir, name: str, sites: list[str], log: RankLogger, address: str | None = None
    ) -> None:
        super().__init__(job_dir, name, log, children=list(sites), address=address)

    def _cached_model(self, task: Task) -> tuple[GlobalModel, str]:
        """With staging, the rank reads the staged model (verified once, for all its sites) into the memory file its
        sites map; their results come back in-process too. Without it, or where the file is unusable: gRPC."""
        if task.staged and self.stager is not None:
            try:
                params = map_tensors(staging.verified(self.stager.root, task.staged))
                model = GlobalModel(params, task.round, ref=task.ref)
                if model.specs != task.manifest:
                    raise errors.MalformedMessageError("staged model does not match the task's manifest")
                return model, "staging"
            except (OSError, errors.HpcflareError) as exc:
                self.log.info(
                    "staging_fallback",
                    f"staged model not usable here ({exc}); pulling it over gRPC",
                    round=task.round,
                    reason=str(exc),
                )
        transport, token = self.upstream.connection.credentials()
        if isinstance(transport, InprocTransport) and isinstance(
            transport.handler, RoundHost
        ):  # SimEnv's server
            request = {"site": self.name, "token": token, "ref": task.ref}
            return self.upstream.connection.retry(
                Rpc.DOWNLOAD, lambda: transport.handler.local_model(request, Peer(transport.address)).alias()
            ), "in-process"
        return super()._cached_model(task)

    def start(self) -> None:
        self.watch_stalls()
        self.upstream.start()
        self.log.info(
            "client_rank_started",
            f"{self.name}: hosting {len(self.members.expected)} sites "
            f"({self.members.expected[0]} .. {self.members.expected[-1]}) as virtual clients",
            sites=self.members.expected,
            pid=os.getpid(),
        )
        self.phase = HostPhase.RUNNING


PROCESSES_PER_CORE = 4
"""clients_per_rank 'auto' on one machine: a process per site up to this many sites per core; beyond that the
sites are packed into one client rank per core (or per visible GPU)."""


def auto_clients_per_rank(n_clients: int, slots: int) -> int:
    """Sites per client rank when ``slots`` client ranks are available: all sites spread evenly over them."""
    return max(1, -(-n_clients // max(1, slots)))


def local_client_slots(n_clients: int) -> int | None:
    """Client ranks for 'auto' on this machine: None (a process per site) for up to PROCESSES_PER_CORE sites
    per core, else one rank per visible GPU, or per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_clients <= PROCESSES_PER_CORE * cores:
        return None
    gpus = [
        d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip() and d.strip() != "-1"
    ]
    return len(gpus) or cores


def settle_clients_per_rank(
    job_dir: JobDir, value: int | str | None, slots: Callable[[JobConfig], int | None] | None = None
) -> JobConfig:
    """Fix the job's clients_per_rank before its ranks start: ``value`` (an Env's own setting) wins over
    job.yaml; 'auto' becomes the sites over ``slots(config)`` client ranks, rounded up (stays 'auto' = 1
    without slots, or with none to spare)."""
    config = job_dir.load_config()
    wanted = config.clients_per_rank if value is None else value
    if wanted == "auto":
        free = slots(config) if slots is not None else None
        wanted = auto_clients_per_rank(len(config.clients), free) if free and free > 0 else "auto"
    else:
        wanted = whole_number("clients_per_rank", wanted, 1)
    if wanted != config.clients_per_rank:
        config.clients_per_rank = wanted
        config.validate()
        job_dir.save_config(config)
    return config


def local_slots(config: JobConfig) -> int | None:
    """``slots`` for LocalEnv and SimEnv (see :func:`local_client_slots`)."""
    return local_client_slots(len(config.clients))


def run_sites(
    job_dir: JobDir, sites: list[str], name: str, address: str | None = None, own_process: bool = True
) -> ExitCode:
    """Run ``sites`` as virtual clients of this rank (``own_process``: the process is the rank's, so its
    working directory, sys.argv and sys.path are set up for the scripts); returns the rank's exit code:
    OK when every site did its part, else the first failed site's code. What each site's script prints goes
    to ``logs/<site>.out`` and, line by line with its name, to the rank's own output."""
    with site_output.routed() as streams:
        return _run_sites(job_dir, sites, name, address, own_process, streams)


def _run_sites(
    job_dir: JobDir,
    sites: list[str],
    name: str,
    address: str | None,
    own_process: bool,
    streams: list[site_output.SiteStreams],
) -> ExitCode:
    config = job_dir.load_config()
    hosted = config.rank_hosts().get(name)
    log = RankLogger(job_dir.log_dir, name, "client-rank")
    host: ClientRankHost | None = None
    rounds: threading.Thread | None = None
    codes: dict[str, ExitCode] = {}
    try:
        if own_process:
            _prepare_process(job_dir, config.train_script, name)
        if hosted is not None:
            host = ClientRankHost(job_dir, name, hosted, log, address)
            host.start()
            rounds = threading.Thread(target=host.serve_rounds, name=f"{name}-rounds", daemon=True)
            rounds.start()

        def site_main(site: str) -> None:
            site_output.bind(site, job_dir.log_dir)  # its prints: logs/<site>.out, and ours prefixed
            try:
                codes[site] = run_client(
                    job_dir, site, per_thread=True, address=None if host else address, parent=host
                )
            finally:
                for stream in streams:
                    stream.end(site, job_dir.log_dir)
                site_output.bind(None)

        threads = [
            threading.Thread(target=site_main, args=(site,), name=f"vc-{site}", daemon=True) for site in sites
        ]
        for thread in threads:
            thread.start()
        if (
            host is not None
        ):  # one thread vouches for every site whose script is alive (no heartbeat thread each)
            threading.Thread(
                target=_vouch, args=(host, dict(zip(sites, threads))), name=f"{name}-vouch", daemon=True
            ).start()
        _join(threads, host, job_dir, log, config.load_settings().end_grace)
        if host is not None and rounds is not None:
            host.leaving = (
                True  # every site is done: say goodbye at the next poll instead of waiting for the end
            )
            rounds.join(host.settings.task_poll_timeout + host.settings.rpc_timeout + host.settings.end_grace)
        failed = {site: code for site, code in codes.items() if code != ExitCode.OK}
        missing = [site for site in sites if site not in codes]
        if failed or missing:
            log.warning(
                "sites_failed",
                f"{name}: {len(failed)} of {len(sites)} site(s) failed "
                f"{dict(list(failed.items())[:10])}" + (f", {len(missing)} still running" if missing else ""),
                failed={s: int(c) for s, c in failed.items()},
                still_running=missing,
            )
        return next(iter(failed.values()), ExitCode.ABORTED if missing else ExitCode.OK)
    except errors.HpcflareError as exc:
        code, reason = exit_for(exc)
        log.error("client_rank_failed", f"{name} cannot host its sites: {reason}", exit_code=int(code))
        return code
    finally:
        log.close()


def _vouch(host: ClientRankHost, threads: dict[str, threading.Thread]) -> None:
    """The in-process sites' heartbeats: a site is alive while its script's thread is."""
    while host.phase != HostPhase.ENDED and any(t.is_alive() for t in threads.values()):
        for site, thread in threads.items():
            if thread.is_alive():
                host.members.touch(site)
        time.sleep(host.settings.heartbeat_interval)


def _join(
    threads: list[threading.Thread],
    host: ClientRankHost | None,
    job_dir: JobDir,
    log: RankLogger,
    end_grace: float,
) -> None:
    """Wait for every site's script; once the job has ended (the host heard it, or status.json says so), a script
    still running after end_grace is left behind (its thread is a daemon, so the rank can exit and free its
    allocation)."""
    ended_at: float | None = None
    while True:
        alive = [t for t in threads if t.is_alive()]
        if not alive:
            return
        alive[0].join(0.5)
        if ended_at is None and (
            host.phase == HostPhase.ENDED
            if host is not None
            else job_dir.read_status().get("state") in FINAL_STATES
        ):
            ended_at = time.monotonic()
        if ended_at is not None and time.monotonic() - ended_at > end_grace:
            stuck = [t.name.removeprefix("vc-") for t in threads if t.is_alive()]
            log.error(
                "script_stopped",
                f"the job ended but the scripts of {stuck[:10]} were still running after "
                f"settings.end_grace={end_grace:g}s; the rank exits without them",
                sites=stuck,
            )
            return


def _prepare_process(job_dir: JobDir, train_script: str, name: str) -> None:
    """The rank's process: its own working directory, the script's folder importable."""
    script = script_path(job_dir, train_script)
    rank_dir = job_dir.site_dir(name)
    rank_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(rank_dir)
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    sys.argv = [str(script)]
