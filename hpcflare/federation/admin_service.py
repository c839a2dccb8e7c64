"""The standing server's side of its admins (NVFlare's FLARE API): Submit, List, Status, Abort, Download,
Sites. Every call is checked against the caller's role (see :mod:`hpcflare.federation.roles`) and every
action that changes or takes something is written to the audit log, refused ones too."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc

from hpcflare import __version__
from hpcflare.errors import ConfigError, HpcflareError
from hpcflare.federation import submission, wire
from hpcflare.federation.api import FederationHost
from hpcflare.federation.channel import service_handler
from hpcflare.federation.roles import Action, Admin
from hpcflare.federation.store import FedJob
from hpcflare.job import SITE_NAME, JobDir


class AdminService:
    def __init__(self, server: FederationHost) -> None:
        self.server = server

    def handler(self) -> grpc.GenericRpcHandler:
        return service_handler(
            wire.ADMIN_SERVICE,
            {
                wire.AdminRpc.SUBMIT: self.submit,
                wire.AdminRpc.LIST: self.list,
                wire.AdminRpc.STATUS: self.status,
                wire.AdminRpc.ABORT: self.abort,
                wire.AdminRpc.DOWNLOAD: self.download,
                wire.AdminRpc.SITES: self.sites,
            },
            lambda rpc, who, exc: self.server.log.error("admin_call_failed", f"{rpc} from {who}: {exc!r}"),
        )

    def _admin(self, identity: str | None, action: Action, job: FedJob | None = None) -> Admin:
        """The caller as an admin allowed to do ``action`` (on ``job``); refusals are audited."""
        try:
            admin = Admin.of(self.server.kit, identity)
            if job is None:
                admin.check(action)
            else:
                admin.check(action, job.submitter, job.submitter_org)
        except HpcflareError as exc:
            if action != Action.VIEW:
                self.server.audit.record(
                    str(identity), str(action), job.job_id if job else "", "denied", detail=str(exc)
                )
            raise
        return admin

    def submit(self, identity: str | None, frames: Iterator[bytes]) -> dict[str, Any]:
        admin = self._admin(identity, Action.SUBMIT)
        head, _ = wire.unpack(next(frames))
        store = self.server.store
        incoming = store.root / f".incoming-{secrets.token_hex(8)}"
        job_id = ""
        try:
            received = wire.receive_bundle(
                frames, incoming, self.server.settings.federation_max_app_bytes, submission.accept_name
            )
            name = JobDir(incoming).load_config().name
            job_id = store.new_id(name if SITE_NAME.match(name) else "job")
            config = submission.prepare(incoming, self.server.kit, job_id)
            spec = submission.check_resource_spec(
                head.get("resource_spec") or submission.resource_spec_from_meta(incoming),
                config.participants(),
            )
            # job.yaml as prepared (its job id is the server's); the app's files as received and hash-checked
            manifest = [wire.file_entry(incoming, "job.yaml")]
            manifest += [received[n] for n in sorted(received) if n.startswith("app/")]
            store.folder(job_id).mkdir(parents=True)
            incoming.rename(store.job_dir(job_id).root)
        except HpcflareError as exc:
            self.server.audit.record(admin.name, "submit", job_id, "refused", detail=str(exc))
            raise
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        job = FedJob(
            job_id=job_id,
            name=config.name,
            submitter=admin.name,
            submitter_org=admin.org,
            sites=config.participants(),
            min_clients=config.min_clients,
            manifest=manifest,
            resources=spec,
        )
        store.add(job)
        self.server.audit.record(admin.name, "submit", job_id, role=admin.role, sites=job.sites)
        self.server.log.info(
            "job_submitted", f"{job_id} submitted by {admin.name} for {job.sites}", job=job_id
        )
        self.server.changed(job)
        return {"job_id": job_id}

    def list(self, identity: str | None, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        self._admin(identity, Action.VIEW)
        jobs = sorted(self.server.store.jobs.values(), key=lambda j: j.submitted)
        return {"jobs": [j.summary() for j in jobs]}

    def status(self, identity: str | None, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        """A job's status; with ``since`` (a version seen before) held until it changes or ``wait`` passes."""
        self._admin(identity, Action.VIEW)
        job = self.server.store.get(header.get("job"))
        deadline = time.monotonic() + min(
            float(header.get("wait") or 0), self.server.settings.federation_poll_wait
        )
        with self.server.cv:
            while job.version == header.get("since") and time.monotonic() < deadline:
                self.server.cv.wait(max(0.0, deadline - time.monotonic()))
        return {
            **job.summary(),
            "version": job.version,
            "server": self.server.store.job_dir(job.job_id).read_status(),
        }

    def abort(self, identity: str | None, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        job = self.server.store.get(header.get("job"))
        admin = self._admin(identity, Action.ABORT, job)
        try:
            self.server.abort(job, admin.name)
        except ConfigError as exc:
            self.server.audit.record(admin.name, "abort", job.job_id, "refused", detail=str(exc))
            raise
        self.server.audit.record(admin.name, "abort", job.job_id, role=admin.role)
        return {"state": str(job.state)}

    def download(self, identity: str | None, header: dict[str, Any], data: bytes) -> Iterator[bytes]:
        job = self.server.store.get(header.get("job"))
        admin = self._admin(identity, Action.DOWNLOAD, job)
        folder = self.server.store.folder(job.job_id)
        names = [
            p.relative_to(folder).as_posix()
            for sub in ("job/models", "job/logs", "job/tracking")
            for p in sorted((folder / sub).rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        ]
        names += [n for n in ("job/status.json", "job/job.yaml", "record.json") if (folder / n).is_file()]
        shown, renamed = [], {}
        for site in job.sites:  # beside the server's logs, where `hpcflare logs diagnose` reads every rank's
            logs = self.server.store.site_logs(job.job_id, site) / "logs"
            if logs.is_dir() and admin.may_see_site_logs(self.server.kit.orgs.get(site, site)):
                shown.append(site)
                for path in sorted(p for p in logs.iterdir() if p.is_file() and not p.name.startswith(".")):
                    renamed[path.relative_to(folder).as_posix()] = f"job/logs/{path.name}"
        names += list(renamed)
        self.server.audit.record(admin.name, "download", job.job_id, role=admin.role, site_logs=shown)
        return wire.send_bundle(folder, wire.bundle_files(folder, names, renamed))

    def sites(self, identity: str | None, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        self._admin(identity, Action.VIEW)
        fresh = 2 * self.server.settings.federation_poll_wait + 5
        now = time.time()
        sites = {}
        for name, role in sorted(self.server.kit.participants.items()):
            if role != "client":
                continue
            seen = self.server.sites_seen.get(name)
            sites[name] = {
                "connected": seen is not None and now - seen["last_seen"] <= fresh,
                "org": self.server.kit.orgs.get(name, name),
                **(seen or {}),
            }
        return {
            "server": {
                "name": self.server.kit.name,
                "project": self.server.kit.project,
                "version": __version__,
                "launcher": self.server.launcher.describe(),
                "port": self.server.port,
            },
            "sites": sites,
        }
