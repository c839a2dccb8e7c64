"""``hpcflare federation serve``, ``hpcflare site serve`` and ``hpcflare admin ...``: the commands of a
federation across institutions (see hpcflare.federation)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hpcflare.errors import HpcflareError
from hpcflare.exitcodes import ExitCode, exit_for

ADMIN_ACTIONS = ("submit", "list", "status", "monitor", "abort", "download", "sites")


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "federation", help="run the standing server of a federation (sites and admins connect)"
    )
    p.add_argument("action", choices=("serve",))
    p.add_argument("--kit", required=True, help="the server's startup kit (hpcflare provision)")
    p.add_argument("--port", type=int, default=None, help="the one port sites and admins connect to (8002)")
    p.add_argument("--config", help="server.yaml: job_ports, workspace, launcher, slurm options, settings")
    p.add_argument("--workspace", help="job store and audit log (default: server.yaml's, else ./fed-server)")
    p.set_defaults(func=_federation)
    p = sub.add_parser("site", help="run a site agent: takes the jobs its policy allows and runs them here")
    p.add_argument("action", choices=("serve",))
    p.add_argument("--kit", required=True, help="this site's startup kit")
    p.add_argument("--server", required=True, help="the standing server, HOST:PORT")
    p.add_argument("--config", help="site.yaml: launcher, slurm options, data_root, limits, send_logs")
    p.add_argument("--workspace", help="the site's job folders and audit log (default: ./site-work)")
    p.set_defaults(func=_site)
    p = sub.add_parser("admin", help="submit and manage jobs on a standing server (an admin's kit)")
    p.add_argument("action", choices=ADMIN_ACTIONS)
    p.add_argument("target", nargs="?", help="submit: a job folder or recipe folder; others: a job id")
    p.add_argument("--kit", required=True, help="your admin startup kit")
    p.add_argument("--server", help="the standing server, HOST:PORT (default: the one your kit names)")
    p.add_argument("--dest", default=".", help="download: where the job's results go")
    p.add_argument("--timeout", type=float, default=0.0, help="monitor: give up after this many seconds")
    p.add_argument(
        "--resource-spec", help="submit: JSON {site or '*': {gpus, time_minutes, partition, account}}"
    )
    p.set_defaults(func=_admin)


def _logger(workspace: Path, name: str, role: str) -> Any:
    from hpcflare.rank_logger import RankLogger

    return RankLogger(workspace / "logs", name, role, echo=sys.stdout)


def _until_signalled(stop: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop())


def _federation(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcflare.federation.config import ServerConfig
    from hpcflare.federation.server import FederationServer
    from hpcflare.security.tls import StartupKit

    try:
        config = ServerConfig.load(args.config, port=args.port, workspace=args.workspace)
        kit = StartupKit.load(args.kit)
        server = FederationServer(kit, config, _logger(config.workspace, "federation", "server")).start()
    except HpcflareError as exc:
        code, reason = exit_for(exc)
        print(f"hpcflare federation serve: {reason}", file=sys.stderr)
        return int(code)
    _until_signalled(server.stop)
    server.wait()
    return 0


def _site(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcflare.federation.config import SiteConfig
    from hpcflare.federation.site_agent import SiteAgent
    from hpcflare.security.tls import StartupKit

    try:
        config = SiteConfig.load(args.config, workspace=args.workspace)
        kit = StartupKit.load(args.kit)
        agent = SiteAgent(kit, args.server, config, _logger(config.workspace, kit.name, "site-agent"))
        _until_signalled(agent.stop)
        agent.log.info(
            "agent_started", f"site agent {kit.name} polling {args.server} ({agent.launcher.describe()})"
        )
        agent.run()
    except HpcflareError as exc:
        code, reason = exit_for(exc)
        print(f"hpcflare site serve: {reason}", file=sys.stderr)
        return int(code)
    return 0


def _admin(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcflare.federation.session import MonitorReturnCode, Session

    if args.action not in ("list", "sites") and not args.target:
        print(
            f"hpcflare admin {args.action}: needs a {'job folder' if args.action == 'submit' else 'job id'}",
            file=sys.stderr,
        )
        return 2
    try:
        with Session(args.kit, args.server) as session:
            if args.action == "submit":
                spec = json.loads(args.resource_spec) if args.resource_spec else None
                print(session.submit_job(_job_folder(args.target), resource_spec=spec))
            elif args.action == "list":
                for job in session.list_jobs():
                    print(
                        f"{job['job_id']:<48} {job['state']:<18} {job['submitter']:<12} {job['message'][:60]}"
                    )
            elif args.action == "status":
                print(json.dumps(session.get_job_status(args.target), indent=2))
            elif args.action == "monitor":
                done = session.monitor_job(args.target, args.timeout, callback=_print_status)
                if done != MonitorReturnCode.JOB_FINISHED:
                    print(f"hpcflare admin monitor: {args.target} still running after {args.timeout:g}s")
                    return int(ExitCode.TRANSPORT_ERROR)
                return 0 if session.get_job_status(args.target)["state"] == "done" else 1
            elif args.action == "abort":
                print(json.dumps(session.abort_job(args.target)))
            elif args.action == "download":
                print(session.download_job_result(args.target, args.dest))
            else:
                print(json.dumps(session.get_system_info(), indent=2))
    except (HpcflareError, ValueError) as exc:
        code, reason = exit_for(exc)
        print(f"hpcflare admin {args.action}: {reason}", file=sys.stderr)
        return int(code) if isinstance(exc, HpcflareError) else 2
    return 0


def _job_folder(target: str) -> Path:
    """A job folder as it is, or a recipe folder exported first (its job.py --export-only)."""
    folder = Path(target)
    if (folder / "job.yaml").is_file() or not (folder / "job.py").is_file():
        return folder
    import subprocess
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="hpcflare-export-"))
    subprocess.run(
        [sys.executable, str(folder / "job.py"), "--export-only", "--job-root", str(out)], check=True
    )
    made = [p for p in out.iterdir() if (p / "job.yaml").is_file()]
    if len(made) != 1:
        raise HpcflareError(f"{folder / 'job.py'} --export-only did not leave one job folder in {out}")
    return made[0]


def _print_status(status: dict[str, Any]) -> bool:
    sites = ", ".join(f"{s}={v.get('state')}" for s, v in (status.get("sites") or {}).items())
    server = status.get("server") or {}
    round_ = f" round {server.get('round')}" if server.get("round") else ""
    print(f"{status['state']}{round_}: {status.get('message', '')} [{sites}]", flush=True)
    return True
