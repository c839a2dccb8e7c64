"""A standing server's job store: one folder per submitted job, its record written atomically on every change,
so a restarted server finds every job where it was (and re-attaches to the server ranks still running).

    <workspace>/jobs/<job_id>/record.json     the FedJob below
    <workspace>/jobs/<job_id>/job/            the job's own directory (job.yaml, app/, models/, logs/): its server
                                              rank runs there
    <workspace>/jobs/<job_id>/site_logs/<site>/   logs a site sent (where its policy allows)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from hpcflare.fileio import atomic_write_json
from hpcflare.job import JobDir


class FedJobState(enum.StrEnum):
    SUBMITTED = "submitted"
    WAITING_FOR_SITES = "waiting_for_sites"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


FINISHED = (FedJobState.DONE, FedJobState.FAILED, FedJobState.ABORTED)


class SiteState(enum.StrEnum):
    """A site's side of a job, as its agent reports it."""

    OFFERED = "offered"
    """The job names the site; its agent has not answered yet."""
    ACCEPTED = "accepted"
    """The agent checked the job against the site's policy and fetched its app."""
    REFUSED = "refused"
    """The site's policy refuses the job (POLICY_REFUSED, with the reason)."""
    PENDING = "pending"
    """Its client rank waits in the site's own queue (Slurm PENDING, with the reason in words)."""
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    LEFT_OUT = "left_out"
    """The job started without it (it never answered within site_join_timeout)."""


SITE_FINISHED = (SiteState.REFUSED, SiteState.DONE, SiteState.FAILED, SiteState.ABORTED, SiteState.LEFT_OUT)


@dataclasses.dataclass
class FedJob:
    job_id: str
    name: str
    submitter: str
    submitter_org: str
    sites: list[str]
    min_clients: int
    state: FedJobState = FedJobState.SUBMITTED
    message: str = ""
    submitted: float = dataclasses.field(default_factory=time.time)
    updated: float = dataclasses.field(default_factory=time.time)
    site_states: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """site -> {state, detail, updated, launcher}"""
    server_rank: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The launcher's record of the job's server rank (kind, pid or Slurm job id, exit file)."""
    port: int = 0
    address: str = ""
    """host:port of the job's server rank once it listens ('' host part: the standing server's host)."""
    routed: bool = False
    """Sites reach the job's server rank through the standing server's port (federation.job_proxy); False: at
    the rank's own port (job_routing: ports, or a Flower job, whose SuperNodes speak Flower's own protocol)."""
    exit_code: int | None = None
    version: int = 0
    manifest: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The app files sites fetch: name, size, sha256."""
    resources: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The job's resource_spec: site (or '*') -> gpus, time_minutes, partition, account, client_ranks."""

    def site_state(self, site: str) -> SiteState:
        return SiteState(self.site_states.get(site, {}).get("state", SiteState.OFFERED))

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "state": str(self.state),
            "message": self.message,
            "submitter": self.submitter,
            "submitted": self.submitted,
            "updated": self.updated,
            "sites": {
                s: dict(self.site_states.get(s) or {"state": str(SiteState.OFFERED)}) for s in self.sites
            },
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FedJob:
        fields = {f.name for f in dataclasses.fields(cls)}
        job = cls(**{k: v for k, v in data.items() if k in fields})
        job.state = FedJobState(job.state)
        return job


class JobStore:
    """Every job of a standing server, on disk; the in-memory copies are the server's working state."""

    def __init__(self, workspace: Path) -> None:
        self.root = Path(workspace) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.jobs: dict[str, FedJob] = {}
        for record in sorted(self.root.glob("*/record.json")):
            try:
                job = FedJob.from_dict(json.loads(record.read_text()))
            except (ValueError, TypeError, KeyError):
                continue  # a record that cannot be read is left for the operator; the others load
            self.jobs[job.job_id] = job

    def new_id(self, name: str) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return f"{name[:40]}-{stamp}-{secrets.token_hex(3)}"

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def job_dir(self, job_id: str) -> JobDir:
        return JobDir(self.folder(job_id) / "job")

    def site_logs(self, job_id: str, site: str) -> Path:
        return self.folder(job_id) / "site_logs" / site

    def get(self, job_id: Any) -> FedJob:
        if not isinstance(job_id, str) or job_id not in self.jobs:
            raise LookupError(f"no job {job_id!r:.80} on this server (hpcflare admin list shows the jobs)")
        return self.jobs[job_id]

    def add(self, job: FedJob) -> None:
        with self._lock:
            self.jobs[job.job_id] = job
            self.save(job)

    def save(self, job: FedJob) -> None:
        """Write the record (every change bumps its version, which long-polls wait on)."""
        with self._lock:
            job.version += 1
            job.updated = time.time()
            atomic_write_json(self.folder(job.job_id) / "record.json", dataclasses.asdict(job), indent=1)
