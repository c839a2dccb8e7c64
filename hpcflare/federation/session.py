"""The admin API (NVFlare's FLARE API): a session with a standing server, identified by an admin's startup kit.

from hpcflare.federation import Session

with Session(kit="kits/demo/alice", server="fl.example.org:8002") as s:
    job_id = s.submit_job("jobs/hello-numpy-...")      # an exported job folder, or a recipe
    s.monitor_job(job_id, timeout=3600, callback=lambda status: print(status["state"]) or True)
    s.download_job_result(job_id, "results/")
"""

from __future__ import annotations

import enum
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcflare import errors
from hpcflare.federation import submission, wire
from hpcflare.federation.channel import FederationChannel
from hpcflare.federation.store import FINISHED
from hpcflare.security.tls import StartupKit
from hpcflare.settings import Settings

ADMIN_RPC_TIMEOUT = 60.0
"""Deadline of one admin call that moves no files (list, status, abort, sites)."""
ADMIN_TRANSFER_TIMEOUT = 3600.0
"""Deadline of an admin call that moves files (submit, download)."""


class MonitorReturnCode(enum.Enum):
    JOB_FINISHED = 0
    TIMEOUT = 1
    ENDED_BY_CB = 2


class Session:
    def __init__(
        self, kit: str | Path | StartupKit, server: str | None = None, settings: Settings | None = None
    ) -> None:
        self.kit = kit if isinstance(kit, StartupKit) else StartupKit.load(kit)
        if self.kit.role != "admin":
            raise errors.ConfigError(
                f"{self.kit.path} is the kit of {self.kit.name} (role {self.kit.role}); admin sessions need the "
                "kit of a participant with role admin"
            )
        self.settings = settings or Settings.load("production")
        server = server or self.kit.server_address
        if not server:
            raise errors.ConfigError(
                f"no standing server address: pass server='HOST:PORT' (the kit {self.kit.path} names none; "
                "give the server participant hosts: [...] in project.yaml to have kits name it)"
            )
        self.channel = FederationChannel(self.kit, server, wire.ADMIN_SERVICE)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, rpc: str, header: dict[str, Any], timeout: float = ADMIN_RPC_TIMEOUT) -> dict[str, Any]:
        return self.channel.call(rpc, header, timeout)

    # ------------------------------------------------------------------ jobs
    def submit_job(self, job: str | Path | Any, resource_spec: dict[str, Any] | None = None) -> str:
        """Submit an exported job folder (job.yaml, app/, the initial model) or a recipe; returns the job id."""
        if hasattr(job, "export") and not isinstance(job, str | Path):
            with tempfile.TemporaryDirectory(prefix="hpcflare-submit-") as tmp:
                return self.submit_job(job.export(tmp).root, resource_spec)
        folder = Path(job)
        if not (folder / "job.yaml").is_file():
            raise errors.ConfigError(f"{folder} is not a job folder (no job.yaml); export a recipe first")
        names = submission.submitted_files(folder)
        head = {"resource_spec": resource_spec}  # the job's name and sites are its job.yaml's
        frames = wire.send_bundle(folder, wire.bundle_files(folder, names), head=head)
        return str(self.channel.send(wire.AdminRpc.SUBMIT, frames, ADMIN_TRANSFER_TIMEOUT)["job_id"])

    def list_jobs(self) -> list[dict[str, Any]]:
        return list(self._call(wire.AdminRpc.LIST, {})["jobs"])

    def get_job_status(self, job_id: str, since: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        """The job's state, message and per-site states (``sites``), and its server's status (``server``)."""
        return self._call(
            wire.AdminRpc.STATUS, {"job": job_id, "since": since, "wait": wait}, ADMIN_RPC_TIMEOUT + wait
        )

    def monitor_job(
        self,
        job_id: str,
        timeout: float = 0.0,
        poll_interval: float = 2.0,
        callback: Callable[..., bool] | None = None,
        *cb_args: Any,
        **cb_kwargs: Any,
    ) -> MonitorReturnCode:
        """Follow a job until it ends (or ``timeout`` seconds pass, 0 = no limit); ``callback(status, ...)`` is
        called on every change and ends the monitoring by returning False."""
        deadline = time.monotonic() + timeout if timeout else float("inf")
        version = None
        while True:
            wait = min(
                max(poll_interval, 0.1),
                self.settings.federation_poll_wait,
                max(0.0, deadline - time.monotonic()),
            )
            status = self.get_job_status(job_id, since=version, wait=wait)
            if status.get("version") != version:
                version = status.get("version")
                if callback is not None and not callback(status, *cb_args, **cb_kwargs):
                    return MonitorReturnCode.ENDED_BY_CB
            if status.get("state") in FINISHED:
                return MonitorReturnCode.JOB_FINISHED
            if time.monotonic() >= deadline:
                return MonitorReturnCode.TIMEOUT

    def abort_job(self, job_id: str) -> dict[str, Any]:
        return self._call(wire.AdminRpc.ABORT, {"job": job_id})

    def download_job_result(self, job_id: str, dest: str | Path) -> Path:
        """The job's models, its server's logs and status, and the logs of the sites that send them, into
        ``dest/<job_id>/`` (job/models, job/logs with the sites' logs beside the server's); returns that folder."""
        target = Path(dest) / wire.safe_name(job_id)
        frames = self.channel.fetch(wire.AdminRpc.DOWNLOAD, {"job": job_id}, ADMIN_TRANSFER_TIMEOUT)
        wire.receive_bundle(frames, target, 1 << 62)
        return target

    def get_system_info(self) -> dict[str, Any]:
        """The standing server (name, version, launcher) and every site: connected, last seen, version,
        launcher, host."""
        return self._call(wire.AdminRpc.SITES, {})
