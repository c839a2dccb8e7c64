"""Start one rank of a job: ``python -m hpcflare.runtime.launch --job-dir D --role server|relay|client|auto``.

This is what LocalEnv spawns per process, what SimEnv runs per thread and what launchers/hpcflare-rank execs
under srun/mpiexec. Every role ends through :func:`hpcflare.exitcodes.exit_for`, the one place exceptions
become exit codes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from filelock import Timeout

from hpcflare import errors
from hpcflare.exitcodes import ExitCode, exit_for
from hpcflare.job import JobDir, JobState
from hpcflare.rank_logger import RankLogger, console
from hpcflare.runtime import flower
from hpcflare.runtime.client_rank import run_sites, settle_clients_per_rank
from hpcflare.runtime.cluster.beacon import StartupBeacon
from hpcflare.runtime.cluster.gpus import plan_devices
from hpcflare.runtime.cluster.ranks import RankInfo, RoleKind, detect_rank, role_for_rank, tasks_per_node
from hpcflare.runtime.cluster.rendezvous import RENDEZVOUS, SERVER, MpiRendezvous, Rendezvous, advertise_host
from hpcflare.runtime.cluster.scheduler_end import ending_error
from hpcflare.runtime.relay import Relay
from hpcflare.runtime.script_runner import run_client
from hpcflare.runtime.server import FLServer
from hpcflare.security import tls
from hpcflare.security.jobs import prepare_job
from hpcflare.security.tls import handshake_tap


def run_server(
    job_dir: JobDir,
    echo: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise: str | None = None,
    rendezvous: Rendezvous | None = None,
) -> ExitCode:
    """The server rank; it always publishes its address to the job dir, and to ``rendezvous`` as well."""
    log = RankLogger(job_dir.log_dir, "server", "server", echo=console() if echo else None)
    lock = job_dir.server_lock()
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another server of this job is alive: its status.json is not ours to touch
        log.error(
            "server_running",
            f"another server of job {job_dir.root.name} holds {lock.lock_file}; this one "
            "exits without touching the job",
            exit_code=int(ExitCode.CONFIG_ERROR),
        )
        log.close()
        return ExitCode.CONFIG_ERROR
    try:
        if flower.is_flower(
            job_dir.load_config()
        ):  # Flower's engine: its SuperLink instead of hpcflare's server
            return flower.run_link(job_dir, log, host, advertise, rendezvous, port)
        try:
            server = FLServer(job_dir, log, host=host, port=port, advertise=advertise)
        except errors.ConfigError as exc:
            code, reason = exit_for(exc)
            log.error("config_error", f"cannot start server: {reason}", exit_code=int(code))
            job_dir.write_status(JobState.FAILED, message=reason, exit_code=int(code))
            return code
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: _terminated(server))
        tap = handshake_tap(log, server.grpc.kit)
        try:
            return server.run(rendezvous)
        finally:
            if tap is not None:
                tap.close()
    finally:
        lock.release()
        log.close()


def _terminated(server: FLServer) -> None:
    """SIGTERM: under Slurm, the job ends with Slurm's reason (a lost node, the time limit, scancel, a requeue)."""
    cause = ending_error(os.environ)
    server.abort("SIGTERM received" if cause is None else str(cause), cause)


def run_relay(
    job_dir: JobDir,
    name: str,
    host: str = "127.0.0.1",
    advertise: str | None = None,
    children: list[str] | None = None,
    address: str | None = None,
) -> ExitCode:
    log = RankLogger(job_dir.log_dir, name, "relay")
    tap = None
    try:
        relay = Relay(job_dir, name, log, host=host, advertise=advertise, children=children, address=address)
        tap = handshake_tap(log, relay.upstream.kit)
        return relay.run()
    except errors.ConfigError as exc:
        code, reason = exit_for(exc)
        log.error("config_error", f"cannot start relay: {reason}", exit_code=int(code))
        return code
    finally:
        if tap is not None:
            tap.close()
        log.close()


def run_rank(job_dir: JobDir, info: RankInfo, rendezvous: str = "fs") -> ExitCode:
    """Start whatever this rank is in the job (role by rank); return its exit code."""
    if rendezvous not in RENDEZVOUS:
        raise errors.ConfigError(f"rendezvous must be one of {tuple(RENDEZVOUS)}, got {rendezvous!r}")
    # clients_per_rank 'auto' in a hand-written job: every rank spreads the sites over the same client ranks
    settle_clients_per_rank(job_dir, None, lambda config: info.world - 1 - config.relays)
    # a hand-written sbatch script may skip `python -m hpcflare.security.jobs`: never run silently in plain text
    config = prepare_job(job_dir, secure_default=True)
    settings = config.load_settings()
    if config.relays and rendezvous == MpiRendezvous.kind:
        raise errors.ConfigError(
            "relays find each other through the job directory: use rendezvous='fs' with relays"
        )
    mpi = MpiRendezvous(settings.rendezvous_timeout) if rendezvous == MpiRendezvous.kind else None
    role = role_for_rank(info.rank, info.world, config, tasks_per_node(os.environ))
    _place_devices(role.kind, f"rank {info.rank} ({role.site or role.kind})")
    if role.kind == RoleKind.SERVER:
        return run_server(job_dir, echo=True, host="0.0.0.0", advertise=advertise_host(), rendezvous=mpi)
    if role.kind == RoleKind.RELAY:
        return run_relay(job_dir, role.site, host="0.0.0.0", advertise=advertise_host())
    address = None
    if mpi is not None:  # every rank takes part in the broadcast, idle ones too
        address = mpi.lookup(SERVER, settings.rendezvous_timeout).address
        print(f"[hpcflare] rank {info.rank}: server address {address} from MPI broadcast", flush=True)
    if role.kind == RoleKind.IDLE:
        print(
            f"[hpcflare] rank {info.rank}: no role (job has {len(config.clients)} clients); exiting",
            flush=True,
        )
        return ExitCode.OK
    return run_unit(job_dir, role.site, list(role.sites), address)


def _place_devices(kind: RoleKind, label: str) -> None:
    """This rank's GPUs (see cluster.gpus): a client rank its own device of the node, hosts none."""
    devices, why = plan_devices(kind, os.environ)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        print(f"[hpcflare] {label}: {why}", flush=True)


def run_site_rank(
    job_dir: JobDir, site: str, rank: int, address: str, host: str, advertise: str | None
) -> ExitCode:
    """One task of an institution's part of a job (``--role site``): with a strategy that takes partials, task 0
    is the site's relay (the site's name and certificate, registered with the server at ``address``) and task
    k its k-th client rank, which finds the relay in the site's job folder; otherwise task k is client rank
    k + 1, reaching the server itself."""
    config = job_dir.load_config()
    ranks = config.site_ranks.get(site)
    if not ranks:
        raise errors.ConfigError(f"job {job_dir.root} runs no client ranks of {site} (site_ranks)")
    units = config.client_units()
    relay = bool(config.rank_hosts())
    signal.signal(signal.SIGTERM, _raise_aborted)  # the site agent cancels its part (the job ended, an abort)
    _place_devices(RoleKind.RELAY if relay and rank == 0 else RoleKind.CLIENT, f"{site} task {rank}")
    if relay and rank == 0:
        children = [*ranks, *(s for r in ranks for s in units[r])]
        return run_relay(job_dir, site, host=host, advertise=advertise, children=children, address=address)
    index = rank - 1 if relay else rank
    if index >= len(ranks):
        print(f"[hpcflare] task {rank}: {site} runs {len(ranks)} client ranks; nothing to do", flush=True)
        return ExitCode.OK
    return run_unit(job_dir, ranks[index], units[ranks[index]], None if relay else address)


def run_unit(job_dir: JobDir, name: str, sites: list[str], address: str | None = None) -> ExitCode:
    """A client rank: its one site in this process, or its sites as virtual clients; its start-up beacon tells
    the server it is alive while its sites are still on their way to registering."""
    config = job_dir.load_config()
    if flower.is_flower(config):  # Flower's engine: a SuperNode per site
        return flower.run_nodes(job_dir, name, sites, address)
    interval = config.load_settings().heartbeat_interval
    with StartupBeacon(job_dir.rendezvous_dir, name, sites, interval):
        if sites == [name]:
            return run_client(job_dir, name, address=address)
        return run_sites(job_dir, sites, name, address)


def _raise_aborted(signum: int, frame: object) -> None:
    raise errors.JobAbortedError(f"signal {signum} received")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcflare-rank", description=__doc__)
    parser.add_argument("--job-dir", required=True)
    parser.add_argument(
        "--role",
        choices=("server", "relay", "client", "auto", "site"),
        required=True,
        help="auto: by rank (SLURM_PROCID/PMI_RANK): 0 = server, then relays, then clients in job.yaml order; "
        "site: an institution's relay (rank 0) and client ranks (site_ranks) under --site, server at --address",
    )
    parser.add_argument(
        "--rendezvous",
        choices=tuple(RENDEZVOUS),
        default="fs",
        help="--role auto: find the server via the shared job dir (fs) or an MPI broadcast (mpi)",
    )
    parser.add_argument(
        "--site",
        help="client role: the site, or the client rank (client-rank-N) whose sites run "
        "here as virtual clients (default: by rank); relay role: the relay's name, e.g. relay-1",
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="server: interface to listen on (0.0.0.0 on clusters)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="server: port to listen on (default: any free port, published)"
    )
    parser.add_argument("--address", help="server address host:port (default: read the rendezvous file)")
    parser.add_argument("--quiet", action="store_true", help="server: do not echo progress to stdout")
    args = parser.parse_args(argv)
    job_dir = JobDir(args.job_dir)
    tls.TAP_ENABLED = True  # a process of our own: servers and relays may read gRPC's handshake log lines
    advertise = advertise_host() if args.bind == "0.0.0.0" else None
    if args.role == "auto":
        info = detect_rank()
        if info.rank != 0:
            signal.signal(signal.SIGTERM, _raise_aborted)
        try:
            return int(run_rank(job_dir, info, args.rendezvous))
        except errors.ConfigError as exc:
            print(f"[hpcflare] rank {info.rank}: configuration error: {exc}", file=sys.stderr)
            return int(exit_for(exc)[0])
    if args.role == "site":
        if not args.site or not args.address:
            parser.error("--role site needs --site SITE and --address SERVER_HOST:PORT")
        try:
            rank = detect_rank().rank
            return int(run_site_rank(job_dir, args.site, rank, args.address, args.bind, advertise))
        except errors.ConfigError as exc:
            print(f"[hpcflare] {args.site}: configuration error: {exc}", file=sys.stderr)
            return int(exit_for(exc)[0])
    if args.role == "relay":
        if not args.site:
            parser.error("--role relay needs --site relay-N")
        return int(run_relay(job_dir, args.site, host=args.bind, advertise=advertise))
    if args.role == "server":
        return int(
            run_server(job_dir, echo=not args.quiet, host=args.bind, port=args.port, advertise=advertise)
        )
    try:
        units = job_dir.load_config().client_units()
    except errors.ConfigError as exc:
        parser.error(str(exc))
    if not args.site:
        try:
            rank = detect_rank().rank
        except errors.ConfigError as exc:
            parser.error(f"--site not given and {exc}")
        if rank >= len(units):
            print(f"[hpcflare] rank {rank}: no site (job has {len(units)} client ranks); exiting", flush=True)
            return 0
        args.site = list(units)[rank]
    signal.signal(signal.SIGTERM, _raise_aborted)
    return int(run_unit(job_dir, args.site, units.get(args.site, [args.site]), args.address))


if __name__ == "__main__":
    sys.exit(main())
