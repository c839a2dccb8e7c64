"""The standing server's side of its site agents: Poll (long-poll for the jobs that name the site), Report
(the site-side state of a job), FetchApp (the job's app, hash-checked) and PutLogs (the site's logs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from hpcflare.errors import MalformedMessageError, PermissionDeniedError, UnknownClientError
from hpcflare.federation import wire
from hpcflare.federation.api import FederationHost
from hpcflare.federation.channel import service_handler
from hpcflare.federation.store import FINISHED, SITE_FINISHED, FedJob, FedJobState, SiteState

REPORTABLE = {
    SiteState.ACCEPTED,
    SiteState.REFUSED,
    SiteState.PENDING,
    SiteState.RUNNING,
    SiteState.DONE,
    SiteState.FAILED,
    SiteState.ABORTED,
}


class SiteService:
    def __init__(self, server: FederationHost) -> None:
        self.server = server

    def handler(self) -> grpc.GenericRpcHandler:
        return service_handler(
            wire.SITE_SERVICE,
            {
                wire.SiteRpc.POLL: self.poll,
                wire.SiteRpc.REPORT: self.report,
                wire.SiteRpc.FETCH_APP: self.fetch_app,
                wire.SiteRpc.PUT_LOGS: self.put_logs,
            },
            lambda rpc, who, exc: self.server.log.error("site_call_failed", f"{rpc} from {who}: {exc!r}"),
        )

    def _site(self, identity: str | None) -> str:
        role = self.server.kit.participants.get(identity or "")
        if identity is None or role != "client":
            raise PermissionDeniedError(
                f"{identity!r} is not a site of project {self.server.kit.project!r} (role {role}); site agents "
                "need a client participant's startup kit"
            )
        return identity

    def _job_of(self, site: str, job_id: Any) -> FedJob:
        job = self.server.store.get(job_id)
        if site not in job.sites:
            raise UnknownClientError(f"job {job.job_id} does not name site {site} (its sites: {job.sites})")
        return job

    def _active(self, site: str) -> list[FedJob]:
        """Jobs the site still has to act on: its part is not final, or the job ended and the site may not
        know yet."""
        return [
            j
            for j in self.server.store.jobs.values()
            if site in j.sites and (j.state not in FINISHED or j.site_state(site) not in SITE_FINISHED)
        ]

    def _view(self, job: FedJob, site: str) -> dict[str, Any]:
        view: dict[str, Any] = {
            "job_id": job.job_id,
            "name": job.name,
            "state": str(job.state),
            "message": job.message,
            "site_state": str(job.site_state(site)),
            # behind the proxy a site is told the job (it reaches it through this port), else the rank's port
            "address": f"/{job.job_id}" if job.routed and job.address else job.address,
            "resources": job.resources.get(site) or job.resources.get("*") or {},
        }
        if job.site_state(site) == SiteState.OFFERED and job.state == FedJobState.WAITING_FOR_SITES:
            view["manifest"] = [
                e for e in job.manifest if e["name"] == "job.yaml" or e["name"].startswith("app/")
            ]
        if job.state == FedJobState.RUNNING:
            config = self.server.store.job_dir(job.job_id).load_config()
            view["clients"], view["min_clients"] = config.clients, config.min_clients
        return view

    def poll(self, identity: str | None, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        """The site's jobs; held until one of them changes (or settings.federation_poll_wait passes) when the
        agent has already seen them all."""
        site = self._site(identity)
        self.server.note_site(site, header)
        seen = header.get("seen")
        wait = min(float(header.get("wait") or 0), self.server.settings.federation_poll_wait)
        deadline = time.monotonic() + max(0.0, wait)
        with self.server.cv:
            while True:
                jobs = self._active(site)
                token = ",".join(f"{j.job_id}:{j.version}" for j in sorted(jobs, key=lambda j: j.job_id))
                remaining = deadline - time.monotonic()
                if token != seen or remaining <= 0:
                    break
                self.server.cv.wait(remaining)
        self.server.note_site(site, header)
        return {"seen": token, "jobs": [self._view(j, site) for j in jobs]}

    def report(self, identity: str | None, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        site = self._site(identity)
        job = self._job_of(site, header.get("job"))
        try:
            state = SiteState(str(header.get("state")))
        except ValueError:
            raise MalformedMessageError(f"unknown site state {header.get('state')!r:.40}") from None
        if state not in REPORTABLE:
            raise MalformedMessageError(f"a site may not report {state}")
        detail = str(header.get("detail") or "")[:2000]
        entry = job.site_states.get(site) or {}
        if entry.get("state") != state or entry.get("detail") != detail:
            job.site_states[site] = {"state": str(state), "detail": detail, "updated": time.time()}
            if state in (SiteState.ACCEPTED, SiteState.REFUSED):
                self.server.audit.record(
                    site,
                    str(state),
                    job.job_id,
                    "ok" if state == SiteState.ACCEPTED else "refused",
                    detail=detail,
                )
            log = (
                self.server.log.warning
                if state in (SiteState.REFUSED, SiteState.FAILED)
                else self.server.log.info
            )
            log(
                "site_state",
                f"{job.job_id}: {site} {state}" + (f": {detail}" if detail else ""),
                job=job.job_id,
                site=site,
            )
            self.server.changed(job)
        self.server.note_site(site, header)
        return {"job_state": str(job.state)}

    def fetch_app(self, identity: str | None, header: dict[str, Any], data: bytes) -> Iterator[bytes]:
        site = self._site(identity)
        job = self._job_of(site, header.get("job"))
        if job.state in FINISHED:
            raise MalformedMessageError(f"job {job.job_id} already ended ({job.state})")
        files = [e for e in job.manifest if e["name"] == "job.yaml" or e["name"].startswith("app/")]
        return wire.send_bundle(self.server.store.job_dir(job.job_id).root, files)

    def put_logs(self, identity: str | None, frames: Iterator[bytes]) -> dict[str, Any]:
        site = self._site(identity)
        head, _ = wire.unpack(next(frames))
        job = self._job_of(site, head.get("job"))
        dest = self.server.store.site_logs(job.job_id, site)
        received = wire.receive_bundle(
            frames, dest, self.server.settings.federation_max_app_bytes, lambda name: _own_log(site, name)
        )
        self.server.log.info(
            "site_logs", f"{job.job_id}: {site} sent {len(received)} log file(s)", job=job.job_id
        )
        return {"files": len(received)}


def _own_log(site: str, name: str) -> bool:
    """A site sends only its own rank's logs (logs/<site>.jsonl, .log): never a file named for another rank."""
    return "/" not in name[len("logs/") :] and name.startswith(f"logs/{site}.")
