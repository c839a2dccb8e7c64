"""A site agent's watch over the client ranks it started: their state in words, the first cause of a failure
(from the rank's own log), and the site's logs sent back where its policy allows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from hpcflare import errors
from hpcflare.exitcodes import describe
from hpcflare.federation import wire
from hpcflare.federation.audit import AuditLog
from hpcflare.federation.channel import FederationChannel
from hpcflare.federation.config import SiteConfig
from hpcflare.federation.launchers import Launcher, RankState
from hpcflare.federation.store import SiteState
from hpcflare.job import JobDir
from hpcflare.rank_logger import RankLogger
from hpcflare.settings import Settings

FINAL = (SiteState.REFUSED, SiteState.DONE, SiteState.FAILED, SiteState.ABORTED)


class SiteRanks:
    """Mixed into :class:`~hpcflare.federation.site_agent.SiteAgent`."""

    site: str
    config: SiteConfig
    settings: Settings
    log: RankLogger
    audit: AuditLog
    channel: FederationChannel
    launcher: Launcher
    records: dict[str, dict[str, Any]]
    _lock: threading.RLock
    _stop: threading.Event
    _set: Callable[[dict[str, Any], SiteState, str], None]
    _save: Callable[[dict[str, Any]], None]
    _report: Callable[[dict[str, Any]], None]
    job_dir: Callable[[str], JobDir]

    def _check_loop(self) -> None:
        while not self._stop.wait(self.settings.federation_check_interval):
            self.check_ranks()

    def check_ranks(self) -> None:
        with self._lock:
            for record in list(self.records.values()):
                if record.get("launch") and record["state"] not in FINAL:
                    self._check(record)
                if record.get("reported") != [record["state"], record.get("detail", "")]:
                    self._report(record)
                if record.get("logs") == "to_send" and self._send_logs(record["job_id"]):
                    record["logs"] = "sent"
                    self._save(record)

    def _check(self, record: dict[str, Any]) -> None:
        status = self.launcher.status(record["launch"])
        done_at = record.get("job_done_at")
        if (
            status.state in (RankState.PENDING, RankState.RUNNING)
            and done_at
            and time.time() - done_at > self.settings.end_grace
            and not record.get("ended_by_job")
        ):
            self.launcher.cancel(record["launch"])
            record["ended_by_job"] = (
                f"the job completed; its rank was still running settings.end_grace={self.settings.end_grace:g}s "
                "later and was stopped"
            )
            self._save(record)
        if status.state == RankState.PENDING:
            self._set(record, SiteState.PENDING, status.detail)
        elif status.state == RankState.RUNNING:
            self._set(record, SiteState.RUNNING, status.detail)
        else:
            if status.state == RankState.EXITED and status.exit_code == 0:
                state, detail = SiteState.DONE, "the client rank finished its part"
            elif record.get("ended_by_job"):
                state = SiteState.DONE if record.get("job_done_at") else SiteState.ABORTED
                detail = record["ended_by_job"]
            else:
                cause = self._first_cause(record["job_id"]) or status.detail
                code = (
                    f"exit {status.exit_code} ({describe(status.exit_code).split(':')[0]})"
                    if status.exit_code is not None
                    else "lost"
                )
                state, detail = SiteState.FAILED, f"{code}: {cause}"
            self._set(record, state, detail)
            self.log.info("rank_ended", f"{record['job_id']}: {state}: {detail}", job=record["job_id"])
            if self.config.send_logs:
                record["logs"] = "to_send"
                self._save(record)

    def _first_cause(self, job_id: str) -> str:
        """The earliest error the site's ranks logged (their JSON lines: the site's relay, client ranks, virtual
        clients), the cause a user should see."""
        first: tuple[float, str] | None = None
        for path in sorted(self.job_dir(job_id).log_dir.glob("*.jsonl")):
            try:
                for line in path.read_text().splitlines():
                    event = json.loads(line)
                    if str(event.get("level")).upper() == "ERROR":
                        at = float(event.get("t") or 0.0)
                        if first is None or at < first[0]:
                            text = str(event.get("msg") or event.get("message") or event.get("event"))
                            first = (at, text[:1000])
                        break  # a file's later errors come after its first
            except (OSError, ValueError, TypeError):
                continue
        return first[1] if first else ""

    def _send_logs(self, job_id: str) -> bool:
        root = self.job_dir(job_id).root
        names = [p.relative_to(root).as_posix() for p in sorted((root / "logs").rglob("*")) if p.is_file()]
        try:
            frames = wire.send_bundle(root, wire.bundle_files(root, names), head={"job": job_id})
            self.channel.send(wire.SiteRpc.PUT_LOGS, frames, self.settings.stream_timeout)
            self.audit.record(self.site, "send_logs", job_id, "ok", files=len(names))
            return True
        except errors.HpcflareError as exc:
            self.log.warning(
                "logs_not_sent", f"{job_id}: could not send the site's logs yet: {exc}", job=job_id
            )
            return False
