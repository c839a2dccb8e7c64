"""Start one rank of a job: ``python -m hpcflare.runtime.launch --job-dir D --role server|client --site S``.

This is what LocalEnv spawns per process and what launchers/hpcflare-rank execs under srun/mpiexec.
Exit codes come from hpcflare.exitcodes.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

from hpcflare import errors
from hpcflare.client import api as client_api
from hpcflare.exitcodes import ExitCode
from hpcflare.job import JobDir
from hpcflare.logs.rank_logger import RankLogger
from hpcflare.runtime.client_agent import ClientAgent
from hpcflare.security import tls
from hpcflare.security.policy import check_script
from hpcflare.security.tls import handshake_tap


def run_server(job_dir: JobDir, echo: bool = True, host: str = "127.0.0.1", port: int = 0,
               advertise: str | None = None, on_listening: Callable[[str], None] | None = None) -> ExitCode:
    from hpcflare.runtime.server import FLServer

    log = RankLogger(job_dir.log_dir, "server", "server", echo=sys.stdout if echo else None)
    try:
        server = FLServer(job_dir, log, host=host, port=port, advertise=advertise)
    except errors.ConfigError as exc:
        log.error("config_error", f"cannot start server: {exc}", exit_code=int(ExitCode.CONFIG_ERROR))
        job_dir.write_status("failed", message=str(exc), exit_code=int(ExitCode.CONFIG_ERROR))
        return ExitCode.CONFIG_ERROR
    if threading_is_main():
        signal.signal(signal.SIGTERM, lambda *_: server.abort("SIGTERM received"))
    tap = handshake_tap(log, server.grpc.kit)
    try:
        return server.run(on_listening)
    finally:
        if tap is not None:
            tap.close()
        log.close()


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def script_path(job_dir: JobDir, script: str) -> Path:
    """The training script, confined to the job's app/ directory (no path traversal)."""
    path = (job_dir.root / script).resolve()
    if job_dir.app_dir.resolve() not in path.parents:
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
        if not per_thread:
            agent.on_stuck = _stop_stuck_process(agent, log)
        if not per_thread:  # process-global state is ours to set
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
        log.info("script_finished", f"{script.name} finished")
    except errors.ConfigError as exc:
        code, status, reason = ExitCode.CONFIG_ERROR, "failed", str(exc)
    except errors.PolicyRefusedError as exc:
        code, status, reason = ExitCode.POLICY_REFUSED, "failed", str(exc)
    except errors.CertificateError as exc:
        code, status, reason = ExitCode.CERTIFICATE_ERROR, "failed", str(exc)
    except errors.UpdateRejectedError as exc:
        code, status, reason = ExitCode.UPDATE_REJECTED, "failed", str(exc)
    except errors.PeerGoneError as exc:
        code, status, reason = ExitCode.SERVER_LOST, "failed", str(exc)
    except errors.TransportError as exc:
        code, status, reason = ExitCode.TRANSPORT_ERROR, "failed", str(exc)
    except errors.JobAbortedError as exc:
        code, status, reason = ExitCode.ABORTED, "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - anything the user's script raises
        code, status = ExitCode.TRAIN_SCRIPT_FAILED, "failed"
        reason = f"{type(exc).__name__}: {exc}"
        log.error("traceback", traceback.format_exc())
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


def _raise_aborted(signum: int, frame: object) -> None:
    raise errors.JobAbortedError(f"signal {signum} received")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcflare-rank", description=__doc__)
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--role", choices=("server", "relay", "client", "auto"), required=True,
                        help="auto: by rank (SLURM_PROCID/PMI_RANK): 0 = server, then clients in job.yaml order")
    parser.add_argument("--rendezvous", choices=("fs", "mpi"), default="fs",
                        help="--role auto: find the server via the shared job dir (fs) or an MPI broadcast (mpi)")
    parser.add_argument("--site", help="site name (client role; default: the job's clients in order, by rank); "
                        "relay role: the relay's name, e.g. relay-1")
    parser.add_argument("--bind", default="127.0.0.1", help="server: interface to listen on (0.0.0.0 on clusters)")
    parser.add_argument("--address", help="server address host:port (default: read the rendezvous file)")
    parser.add_argument("--quiet", action="store_true", help="server: do not echo progress to stdout")
    args = parser.parse_args(argv)
    job_dir = JobDir(args.job_dir)
    tls.TAP_ENABLED = True  # a process of our own: servers and relays may read gRPC's handshake log lines
    if args.role == "auto":
        from hpcflare.runtime.ranks import detect_rank, run_rank

        info = detect_rank()
        if info.rank != 0:
            signal.signal(signal.SIGTERM, _raise_aborted)
        try:
            return int(run_rank(job_dir, info, args.rendezvous))
        except errors.ConfigError as exc:
            print(f"[hpcflare] rank {info.rank}: configuration error: {exc}", file=sys.stderr)
            return int(ExitCode.CONFIG_ERROR)
    if args.role == "relay":
        from hpcflare.runtime.ranks import advertise_host
        from hpcflare.runtime.relay import run_relay

        if not args.site:
            parser.error("--role relay needs --site relay-N")
        advertise = advertise_host() if args.bind == "0.0.0.0" else None
        return int(run_relay(job_dir, args.site, host=args.bind, advertise=advertise))
    if args.role == "server":
        from hpcflare.runtime.ranks import advertise_host

        advertise = advertise_host() if args.bind == "0.0.0.0" else None
        return int(run_server(job_dir, echo=not args.quiet, host=args.bind, advertise=advertise))
    if not args.site:
        from hpcflare.runtime.ranks import detect_rank

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
