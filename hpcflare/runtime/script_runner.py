"""A client rank's training script: find it, run it against the Client API, report how it ended.

The script runs in the rank's own process (``runpy``), so its ``flare.*`` calls reach this site's agent
directly. ``launch_once: false`` (NVFlare's launch_once=False) runs it afresh for every task: each run
handles one receive/send and returns, and its module globals are dropped before the next task; the site's
connection stays up in between. ``nvflare_compat`` makes ``import nvflare.client`` (and the other names
in :mod:`hpcflare.client.nvflare_compat`) resolve to hpcflare here.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from hpcflare import errors
from hpcflare.client import api as client_api
from hpcflare.client import nvflare_compat
from hpcflare.exitcodes import ExitCode, exit_for, format_traceback, needs_traceback
from hpcflare.job import JobDir
from hpcflare.plugins import SITE_SIDES
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.beacon import record_start_failure
from hpcflare.runtime.cluster.rendezvous import incarnation
from hpcflare.runtime.site.agent import ClientAgent
from hpcflare.security.policy import check_script
from hpcflare.transport.api import ServerHandler


class ThreadArgv(list):  # type: ignore[type-arg]
    """``sys.argv`` as each script thread sees it, so sites sharing a process (SimEnv, a client rank's virtual
    clients) each parse their own train_args; any other thread sees the process's own argv (the list itself)."""

    _local = threading.local()

    def _view(self) -> list[str]:
        own = getattr(self._local, "argv", None)
        return own if own is not None else list(list.__iter__(self))

    @classmethod
    def set_for_thread(cls, argv: list[str] | None) -> None:
        if not isinstance(sys.argv, cls):
            sys.argv = cls(sys.argv)
        cls._local.argv = argv

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        return self._view()[index]

    def __len__(self) -> int:
        return len(self._view())

    def __iter__(self):  # type: ignore[no-untyped-def, override]
        return iter(self._view())

    def __contains__(self, item: object) -> bool:
        return item in self._view()

    def __eq__(self, other: object) -> bool:
        return self._view() == other

    def __repr__(self) -> str:
        return repr(self._view())

    __hash__ = None  # type: ignore[assignment]


def script_path(job_dir: JobDir, script: str) -> Path:
    """The training script, confined to the job's app/ directory (no path traversal, no symlink out of it)."""
    app = job_dir.app_dir
    if app.is_symlink() or job_dir.root.resolve() not in app.resolve().parents:
        raise errors.ConfigError(
            f"{app} is a symlink out of the job directory; a job's app/ must be a real folder"
        )
    path = (job_dir.root / script).resolve()
    if app.resolve() not in path.parents:
        raise errors.ConfigError(f"train_script {script!r} must live under {job_dir.app_dir}")
    if not path.is_file():
        raise errors.ConfigError(f"train_script {path} not found")
    return path


def run_client(
    job_dir: JobDir,
    site: str,
    per_thread: bool = False,
    address: str | None = None,
    parent: ServerHandler | None = None,
) -> ExitCode:
    """Register the site, run the training script against the Client API, report how it ended.
    ``per_thread``: the site shares its process with others (its Client API state and sys.argv are the
    thread's); ``parent``: its host in this process (a client rank's virtual client)."""
    log = RankLogger(job_dir.log_dir, site, "client", keep_open=not per_thread)
    agent: ClientAgent | None = None
    code, status, reason = ExitCode.OK, "done", ""
    try:
        agent = ClientAgent(job_dir, site, log, address, parent=parent, site_sides=SITE_SIDES)
        config = agent.config
        script = script_path(job_dir, config.train_script)
        check_script(agent.kit, script)
        args = config.site_train_args.get(site, config.train_args)
        if nvflare_compat.wanted(config.nvflare_compat) and nvflare_compat.install():
            log.info(
                "nvflare_compat", "nvflare.client and the other NVFlare client names resolve to hpcflare here"
            )
        client_api.bind(agent, per_thread)  # the script's flare.init() registers the site
        if not per_thread:  # process-global state is ours to set
            agent.on_stuck = _stop_stuck_process(agent, log)
            site_dir = job_dir.site_dir(site)
            site_dir.mkdir(parents=True, exist_ok=True)
            os.chdir(site_dir)
            sys.argv = [str(script), *args]
            sys.path.insert(0, str(script.parent))
        else:
            ThreadArgv.set_for_thread([str(script), *args])
        log.info("script_started", f"running {script.name} {' '.join(args)}".strip())
        runs = 0
        while True:
            _run_script(script, log, site)
            runs += 1
            early = _ended_early(agent, script.name)
            if early:
                code, status, reason = ExitCode.TRAIN_SCRIPT_FAILED, "failed", early
                break
            if config.launch_once or not _more_work():
                break
            log.info(
                "script_started",
                f"running {script.name} again for round {_pending_round()} (launch_once: false)",
                run=runs + 1,
            )
        log.info("script_finished", f"{script.name} finished" + (f" ({runs} runs)" if runs > 1 else ""))
    except Exception as exc:  # noqa: BLE001 - anything the user's script raises ends here
        code, reason = exit_for(exc, user_code=True)
        status = "failed"
        if code == ExitCode.TRAIN_SCRIPT_FAILED:
            reason += _where(exc, job_dir.app_dir)
        if needs_traceback(code):
            log.error("traceback", format_traceback(exc))
    finally:
        if code != ExitCode.OK:
            log.error(
                "client_failed",
                f"{site} exits with {code.name} ({int(code)}): {reason}",
                exit_code=int(code),
                reason=reason,
            )
        if code != ExitCode.OK and (agent is None or not agent.started):
            # the server may never hear from this site: leave its cause where the server looks while it waits
            record_start_failure(job_dir.rendezvous_dir, site, f"{code.name}: {reason}", incarnation())
        if (
            agent is not None
            and not agent.started
            and code not in (ExitCode.OK, ExitCode.CONFIG_ERROR, ExitCode.CERTIFICATE_ERROR)
        ):
            _report_early_failure(agent, reason, log)
        if agent is not None:
            agent.close(status, reason)
        client_api.unbind()
        if per_thread:
            ThreadArgv.set_for_thread(None)
        log.close()
    return code


def _run_script(script: Path, log: RankLogger, site: str) -> None:
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise RuntimeError(f"training script exited with status {exc.code}") from None
    except errors.SiteEndedError as exc:  # raised into the script by the Client API: its part is over
        log.info("site_ended", f"{site}'s part of the job ended inside a round: {exc}")


def _more_work() -> bool:
    """After a run of a launch-per-task script: wait for the next task (True) or the job's end (False)."""
    ctx = client_api.current()
    return ctx is not None and ctx.initialized and client_api.is_running(ctx=ctx)


def _pending_round() -> int | None:
    ctx = client_api.current()
    return ctx.task.round if ctx is not None and ctx.task is not None else None


def _ended_early(agent: ClientAgent, script: str) -> str:
    """Why a script that returned normally still failed its site ('' when it did its part)."""
    if not agent.started:
        return f"{script} returned without calling flare.init(): the site never joined the job"
    if not agent.ended and agent.tasks.pending is not None:
        return (
            f"{script} returned while the job was still running, without sending its result for round "
            f"{agent.tasks.pending.round} (call flare.send() for every task, until flare.is_running() is False)"
        )
    return ""


def _where(exc: BaseException, app_dir: Path) -> str:
    """' (at client.py:12)': the innermost frame of the exception inside the job's training code."""
    app = str(app_dir.resolve())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(app)]
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def _stop_stuck_process(agent: ClientAgent, log: RankLogger) -> Callable[[str, bool], None]:
    def stop(reason: str, server_lost: bool) -> None:
        code = ExitCode.SERVER_LOST if server_lost else ExitCode.ABORTED
        log.error(
            "script_stopped",
            f"{agent.site} stopped with {code.name} ({int(code)}): {reason}",
            exit_code=int(code),
            reason=reason,
        )
        if not server_lost:
            agent.close("failed", reason)
        log.close()
        os._exit(int(code))

    return stop


def _report_early_failure(agent: ClientAgent, reason: str, log: RankLogger) -> None:
    """The script died before flare.init(): register just to tell the server why, so it stops waiting."""
    try:
        agent.settings = agent.settings.replace(
            server_lost_timeout=min(agent.settings.server_lost_timeout, 5.0),
            task_poll_timeout=min(agent.settings.task_poll_timeout, 4.0),
            rendezvous_timeout=min(agent.settings.rendezvous_timeout, 5.0),
        )
        agent.start()
    except errors.HpcflareError as exc:
        log.warning("report_failed", f"could not report the failure to the server: {exc}")
