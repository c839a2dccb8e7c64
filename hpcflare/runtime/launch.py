"""Start one rank of a job: ``python -m hpcflare.runtime.launch --job-dir D --role server|relay|client|auto``.

This is what LocalEnv spawns per process, what SimEnv runs per thread and what launchers/hpcflare-rank execs
under srun/mpiexec. Every role ends through :func:`hpcflare.exitcodes.exit_for`, the one place exceptions
become exit codes.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from filelock import Timeout

from hpcflare import errors
from hpcflare.client import api as client_api
from hpcflare.exitcodes import ExitCode, exit_for, format_traceback, needs_traceback
from hpcflare.job import JobDir
from hpcflare.logs.rank_logger import RankLogger
from hpcflare.runtime.client_agent import ClientAgent
from hpcflare.runtime.ranks import RankInfo, RoleKind, detect_rank, role_for_rank
from hpcflare.runtime.relay import Relay
from hpcflare.runtime.rendezvous import RENDEZVOUS, SERVER, MpiRendezvous, Rendezvous, advertise_host
from hpcflare.runtime.server import FLServer
from hpcflare.security import tls
from hpcflare.security.jobs import prepare_job
from hpcflare.security.policy import check_script
from hpcflare.security.tls import handshake_tap


def run_server(job_dir: JobDir, echo: bool = True, host: str = "127.0.0.1", port: int = 0,
               advertise: str | None = None, rendezvous: Rendezvous | None = None) -> ExitCode:
    """The server rank; it always publishes its address to the job dir, and to ``rendezvous`` as well."""
    log = RankLogger(job_dir.log_dir, "server", "server", echo=sys.stdout if echo else None)
    lock = job_dir.server_lock()
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another server of this job is alive: its status.json is not ours to touch
        log.error("server_running", f"another server of job {job_dir.root.name} holds {lock.lock_file}; this one "
                  "exits without touching the job", exit_code=int(ExitCode.CONFIG_ERROR))
        log.close()
        return ExitCode.CONFIG_ERROR
    try:
        try:
            server = FLServer(job_dir, log, host=host, port=port, advertise=advertise)
        except errors.ConfigError as exc:
            code, reason = exit_for(exc)
            log.error("config_error", f"cannot start server: {reason}", exit_code=int(code))
            job_dir.write_status("failed", message=reason, exit_code=int(code))
            return code
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: server.abort("SIGTERM received"))
        tap = handshake_tap(log, server.grpc.kit)
        try:
            return server.run(rendezvous)
        finally:
            if tap is not None:
                tap.close()
    finally:
        lock.release()
        log.close()


def run_relay(job_dir: JobDir, name: str, host: str = "127.0.0.1", advertise: str | None = None) -> ExitCode:
    log = RankLogger(job_dir.log_dir, name, "relay")
    tap = None
    try:
        relay = Relay(job_dir, name, log, host=host, advertise=advertise)
        tap = handshake_tap(log, relay.grpc.kit)
        return relay.run()
    except errors.ConfigError as exc:
        code, reason = exit_for(exc)
        log.error("config_error", f"cannot start relay: {reason}", exit_code=int(code))
        return code
    finally:
        if tap is not None:
            tap.close()
        log.close()


def script_path(job_dir: JobDir, script: str) -> Path:
    """The training script, confined to the job's app/ directory (no path traversal, no symlink out of it)."""
    app = job_dir.app_dir
    if app.is_symlink() or job_dir.root.resolve() not in app.resolve().parents:
        raise errors.ConfigError(f"{app} is a symlink out of the job directory; a job's app/ must be a real folder")
    path = (job_dir.root / script).resolve()
    if app.resolve() not in path.parents:
        raise errors.ConfigError(f"train_script {script!r} must live under {job_dir.app_dir}")
    if not path.is_file():
        raise errors.ConfigError(f"train_script {path} not found")
    return path


def run_client(job_dir: JobDir, site: str, per_thread: bool = False, address: str | None = None) -> ExitCode:
    """Register the site, run the training script against the Client API, report how it ended."""
    log = RankLogger(job_dir.log_dir, site, "client")
    agent: ClientAgent | None = None
    code, status, reason = ExitCode.OK, "done", ""
    try:
        agent = ClientAgent(job_dir, site, log, address)
        script = script_path(job_dir, agent.config.train_script)
        check_script(agent.kit, script)
        client_api.bind(agent, per_thread)  # the script's flare.init() registers the site
        if not per_thread:  # process-global state is ours to set
            agent.on_stuck = _stop_stuck_process(agent, log)
            site_dir = job_dir.site_dir(site)
            site_dir.mkdir(parents=True, exist_ok=True)
            os.chdir(site_dir)
            sys.argv = [str(script), *agent.config.train_args]
            sys.path.insert(0, str(script.parent))
        log.info("script_started", f"running {script.name} {' '.join(agent.config.train_args)}".strip())
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise RuntimeError(f"training script exited with status {exc.code}") from None
        except errors.SiteEndedError as exc:  # raised into the script by the Client API: its part is over
            log.info("site_ended", f"{site}'s part of the job ended inside a round: {exc}")
        log.info("script_finished", f"{script.name} finished")
        early = _ended_early(agent, script.name)
        if early:
            code, status, reason = ExitCode.TRAIN_SCRIPT_FAILED, "failed", early
    except Exception as exc:  # noqa: BLE001 - anything the user's script raises ends here
        code, reason = exit_for(exc, user_code=True)
        status = "failed"
        if code == ExitCode.TRAIN_SCRIPT_FAILED:
            reason += _where(exc, job_dir.app_dir)
        if needs_traceback(code):
            log.error("traceback", format_traceback(exc))
    finally:
        if code != ExitCode.OK:
            log.error("client_failed", f"{site} exits with {code.name} ({int(code)}): {reason}", exit_code=int(code),
                      reason=reason)
        if agent is not None and not agent.started and code not in (ExitCode.OK, ExitCode.CONFIG_ERROR,
                                                                       ExitCode.CERTIFICATE_ERROR):
            _report_early_failure(agent, reason, log)
        if agent is not None:
            agent.close(status, reason)
        client_api.unbind()
        log.close()
    return code


def _ended_early(agent: ClientAgent, script: str) -> str:
    """Why a script that returned normally still failed its site ('' when it did its part)."""
    if not agent.started:
        return f"{script} returned without calling flare.init(): the site never joined the job"
    if not agent.ended and agent.tasks.pending is not None:
        return (f"{script} returned while the job was still running, without sending its result for round "
                f"{agent.tasks.pending.round} (call flare.send() for every task, until flare.is_running() is False)")
    return ""


def _where(exc: BaseException, app_dir: Path) -> str:
    """' (at client.py:12)': the innermost frame of the exception inside the job's training code."""
    app = str(app_dir.resolve())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(app)]
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def _stop_stuck_process(agent: ClientAgent, log: RankLogger) -> Callable[[str, bool], None]:
    def stop(reason: str, server_lost: bool) -> None:
        code = ExitCode.SERVER_LOST if server_lost else ExitCode.ABORTED
        log.error("script_stopped", f"{agent.site} stopped with {code.name} ({int(code)}): {reason}",
                  exit_code=int(code), reason=reason)
        if not server_lost:
            agent.close("failed", reason)
        log.close()
        os._exit(int(code))
    return stop


def _report_early_failure(agent: ClientAgent, reason: str, log: RankLogger) -> None:
    """The script died before flare.init(): register just to tell the server why, so it stops waiting."""
    try:
        agent.settings = agent.settings.replace(server_lost_timeout=min(agent.settings.server_lost_timeout, 5.0),
                                                task_poll_timeout=min(agent.settings.task_poll_timeout, 4.0),
                                                rendezvous_timeout=min(agent.settings.rendezvous_timeout, 5.0))
        agent.start()
    except errors.HpcflareError as exc:
        log.warning("report_failed", f"could not report the failure to the server: {exc}")


def run_rank(job_dir: JobDir, info: RankInfo, rendezvous: str = "fs") -> ExitCode:
    """Start whatever this rank is in the job (role by rank); return its exit code."""
    if rendezvous not in RENDEZVOUS:
        raise errors.ConfigError(f"rendezvous must be one of {tuple(RENDEZVOUS)}, got {rendezvous!r}")
    # a hand-written sbatch script may skip `python -m hpcflare.security.jobs`: never run silently in plain text
    config = prepare_job(job_dir, secure_default=True)
    settings = config.load_settings()
    if config.relays and rendezvous == MpiRendezvous.kind:
        raise errors.ConfigError("relays find each other through the job directory: use rendezvous='fs' with relays")
    mpi = MpiRendezvous(settings.rendezvous_timeout) if rendezvous == MpiRendezvous.kind else None
    role = role_for_rank(info.rank, info.world, config)
    if role.kind == RoleKind.SERVER:
        return run_server(job_dir, echo=True, host="0.0.0.0", advertise=advertise_host(), rendezvous=mpi)
    if role.kind == RoleKind.RELAY:
        return run_relay(job_dir, role.site, host="0.0.0.0", advertise=advertise_host())
    address = None
    if mpi is not None:  # every rank takes part in the broadcast, idle ones too
        address = mpi.lookup(SERVER, settings.rendezvous_timeout).address
        print(f"[hpcflare] rank {info.rank}: server address {address} from MPI broadcast", flush=True)
    if role.kind == RoleKind.IDLE:
        print(f"[hpcflare] rank {info.rank}: no role (job has {len(config.clients)} clients); exiting", flush=True)
        return ExitCode.OK
    return run_client(job_dir, role.site, address=address)


def _raise_aborted(signum: int, frame: object) -> None:
    raise errors.JobAbortedError(f"signal {signum} received")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcflare-rank", description=__doc__)
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--role", choices=("server", "relay", "client", "auto"), required=True,
                        help="auto: by rank (SLURM_PROCID/PMI_RANK): 0 = server, then relays, then clients in "
                        "job.yaml order")
    parser.add_argument("--rendezvous", choices=tuple(RENDEZVOUS), default="fs",
                        help="--role auto: find the server via the shared job dir (fs) or an MPI broadcast (mpi)")
    parser.add_argument("--site", help="site name (client role; default: the job's clients in order, by rank); "
                        "relay role: the relay's name, e.g. relay-1")
    parser.add_argument("--bind", default="127.0.0.1", help="server: interface to listen on (0.0.0.0 on clusters)")
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
    if args.role == "relay":
        if not args.site:
            parser.error("--role relay needs --site relay-N")
        return int(run_relay(job_dir, args.site, host=args.bind, advertise=advertise))
    if args.role == "server":
        return int(run_server(job_dir, echo=not args.quiet, host=args.bind, advertise=advertise))
    if not args.site:
        try:
            clients = job_dir.load_config().clients
            rank = detect_rank().rank
        except errors.ConfigError as exc:
            parser.error(f"--site not given and {exc}")
        if rank >= len(clients):
            print(f"[hpcflare] rank {rank}: no site (job has {len(clients)} clients); exiting", flush=True)
            return 0
        args.site = clients[rank]
    signal.signal(signal.SIGTERM, _raise_aborted)
    return int(run_client(job_dir, args.site, address=args.address))


if __name__ == "__main__":
    sys.exit(main())
