"""The site agent: ``hpcflare site serve --kit SITE_KIT --server HOST:PORT [--config site.yaml]``.

A long-lived process at the institution that only ever connects out. It long-polls the standing server for jobs
naming its site and, for each:

1. checks the job against the site's policy before anything runs: the training script's sha256 (the kit's
   allowed_scripts and site.yaml's), the resources the job asks for (site.yaml limits), ``{data_root}``;
2. fetches the job's app (every file's sha256 checked) into its own workspace and answers accepted, or refused
   with the reason (the admin sees POLICY_REFUSED at once);
3. once the job's server rank listens, starts its client rank with the site's own launcher (local processes or
   its Slurm cluster, with site.yaml's account/partition/qos/gres) and reports its state in words (Slurm
   PENDING and why, running, failed and the first cause, done);
4. sends the site's logs back when site.yaml allows it.

Its records live in ``<workspace>/jobs/<job_id>/agent.json``: a restarted agent re-attaches to the ranks it
started (they run in sessions of their own) and reports what it had not yet reported. A lost server is retried
with back-off (settings.federation_retry_max); the ranks keep training meanwhile.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

from hpcflare import __version__, errors
from hpcflare.federation import wire
from hpcflare.federation.audit import AuditLog
from hpcflare.federation.channel import FederationChannel, backoff
from hpcflare.federation.config import SiteConfig
from hpcflare.federation.launchers import RankState, make_launcher
from hpcflare.federation.site_policy import SitePolicy
from hpcflare.federation.site_ranks import FINAL, SiteRanks
from hpcflare.federation.store import SiteState
from hpcflare.fileio import atomic_write_json
from hpcflare.job import AGENT_RECORD, JobDir
from hpcflare.rank_logger import RankLogger
from hpcflare.security.tls import StartupKit

ENDED_JOB = ("done", "failed", "aborted")


class SiteAgent(SiteRanks):
    def __init__(self, kit: StartupKit, server: str, config: SiteConfig, log: RankLogger) -> None:
        if kit.role != "client":
            raise errors.ConfigError(
                f"{kit.path} is the kit of {kit.name} (role {kit.role}); a site agent needs a site's kit"
            )
        self.kit, self.site, self.server, self.config, self.log = kit, kit.name, server, config, log
        self.settings = config.settings
        self.channel = FederationChannel(kit, server, wire.SITE_SERVICE)
        self.launcher = make_launcher(config.launcher, config.slurm)
        self.policy = SitePolicy(kit, config)
        self.audit = AuditLog(config.workspace / "audit.jsonl")
        self.jobs_root = config.workspace / "jobs"
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.jobs_root.glob(f"*/{AGENT_RECORD}")):
            try:
                record = json.loads(path.read_text())
                self.records[str(record["job_id"])] = record
            except (ValueError, KeyError):
                continue
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ records
    def _save(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.job_dir(record["job_id"]).agent_record, record, indent=1)

    def job_dir(self, job_id: str) -> JobDir:
        return JobDir(self.jobs_root / wire.safe_name(job_id) / "job")

    # ------------------------------------------------------------------ main loop
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        live = [r["job_id"] for r in self.records.values() if r.get("launch") and r.get("state") not in FINAL]
        if live:
            self.log.info("ranks_reattached", f"looking after the ranks of {live} again")
        checker = threading.Thread(target=self._check_loop, name="site-ranks", daemon=True)
        checker.start()
        seen, failures = None, 0
        while not self._stop.is_set():
            try:
                reply = self.channel.call(
                    wire.SiteRpc.POLL,
                    {
                        "seen": seen,
                        "wait": self.settings.federation_poll_wait,
                        "version": __version__,
                        "launcher": self.launcher.describe(),
                        "host": socket.gethostname(),
                    },
                    self.settings.federation_poll_wait + self.settings.rpc_timeout,
                )
            except errors.CertificateError as exc:
                self.log.error("server_refused_kit", str(exc))
                raise
            except errors.HpcflareError as exc:
                failures += 1
                pause = backoff(failures, self.settings.federation_retry_max)
                self.log.warning(
                    "server_unreachable",
                    f"cannot reach the standing server at {self.server} ({exc}); retrying in {pause:g}s",
                )
                self._stop.wait(pause)
                continue
            if failures:
                self.log.info("server_reachable", f"reached the standing server at {self.server} again")
            failures, seen = 0, reply.get("seen")
            for view in reply.get("jobs") or []:
                try:
                    self.handle(view)
                except errors.HpcflareError as exc:
                    self.log.warning(
                        "job_handling_failed", f"{view.get('job_id')}: {exc}", job=view.get("job_id")
                    )
                    seen = None  # look again after the next poll
        checker.join(timeout=10)

    def handle(self, view: dict[str, Any]) -> None:
        job_id = wire.safe_name(view.get("job_id"))
        with self._lock:
            record = self.records.get(job_id)
            if record is None:
                if view.get("site_state") != SiteState.OFFERED or view.get("state") in ENDED_JOB:
                    return
                record = self.records[job_id] = {
                    "job_id": job_id,
                    "site": self.site,
                    "state": "new",
                    "reported": None,
                }
                self._decide(record, view)
            if (
                view.get("state") == "running"
                and view.get("address")  # the job's server rank listens (an sbatch one publishes it first)
                and record["state"] == SiteState.ACCEPTED
                and not record.get("launch")
            ):
                self._launch(record, view)
            if view.get("state") in ENDED_JOB and record.get("launch") and record["state"] not in FINAL:
                if view.get("state") == "done":  # its rank ends by itself; stopped only after end_grace
                    record.setdefault("job_done_at", time.time())
                elif not record.get("ended_by_job") and self.launcher.status(record["launch"]).state in (
                    RankState.PENDING,
                    RankState.RUNNING,
                ):  # a rank that already ended keeps its own cause (often why the job failed)
                    self.launcher.cancel(record["launch"])
                    record["ended_by_job"] = f"the job {view.get('state')}: {view.get('message', '')}"
                self._save(record)
            elif view.get("state") in ENDED_JOB and not record.get("launch") and record["state"] not in FINAL:
                self._set(record, SiteState.ABORTED, f"the job {view.get('state')} before this site started")
            if record.get("reported") != [record["state"], record.get("detail", "")]:
                self._report(record)

    def _decide(self, record: dict[str, Any], view: dict[str, Any]) -> None:
        """Fetch the app, check it against the site's policy, answer accepted or refused."""
        job_id = record["job_id"]
        job_dir = self.job_dir(job_id)
        try:
            frames = self.channel.fetch(wire.SiteRpc.FETCH_APP, {"job": job_id}, self.settings.stream_timeout)
            wire.receive_bundle(
                frames,
                job_dir.root,
                self.settings.federation_max_app_bytes,
                lambda name: name == "job.yaml" or name.startswith("app/"),
            )
            config = job_dir.load_config()
            self.policy.check(job_dir, config, view.get("resources") or {})
        except (errors.PolicyRefusedError, errors.ConfigError, errors.MalformedMessageError) as exc:
            self._set(record, SiteState.REFUSED, f"POLICY_REFUSED: {exc}")
            self.audit.record(self.site, "refuse", job_id, "refused", detail=str(exc), name=view.get("name"))
            self.log.warning("job_refused", f"{job_id}: refused: {exc}", job=job_id)
            return
        record["resources"] = view.get("resources") or {}
        self._set(record, SiteState.ACCEPTED, "app fetched and checked")
        self.audit.record(
            self.site, "accept", job_id, "ok", name=view.get("name"), script=config.train_script
        )
        self.log.info(
            "job_accepted",
            f"{job_id}: accepted ({config.train_script} within this site's policy)",
            job=job_id,
        )

    def _launch(self, record: dict[str, Any], view: dict[str, Any]) -> None:
        job_dir = self.job_dir(record["job_id"])
        wants = record.get("resources") or {}
        config = job_dir.load_config()
        ranks = self.policy.client_ranks(config, wants)
        config = self.policy.localise(config, view, ranks)
        job_dir.create(config)
        address = str(view.get("address") or "")
        if address.startswith(":"):  # the job's server rank runs beside the standing server
            address = self.server.rsplit(":", 1)[0] + address
        elif address.startswith("/"):  # reached through the standing server's port (job_routing: proxy)
            address = self.server + address
        command = [sys.executable, "-m", "hpcflare.runtime.launch", "--job-dir", str(job_dir.root)]
        tasks, what = 1, "one client rank"
        if config.site_ranks:  # the site's relay (if the strategy takes partials) and its client ranks
            relay = bool(config.rank_hosts())
            tasks = ranks + relay
            what = f"{'a relay and ' if relay else ''}{ranks} client ranks"
            command += ["--role", "site", "--site", self.site, "--address", address]
            if self.launcher.kind != "local":  # the relay's client ranks may run on other nodes
                command += ["--bind", "0.0.0.0"]
        else:
            command += ["--role", "client", "--site", self.site, "--address", address]
        record["launch"] = self.launcher.start(
            self.site,
            command,
            {"HPCFLARE_KIT": str(self.kit.path)},
            job_dir.root / "launch",
            self.policy.resources(wants),
            tasks,
        )
        self._set(
            record,
            SiteState.PENDING,
            f"{what} started with {self.launcher.describe()}; server rank at {address}",
        )
        self.audit.record(self.site, "launch", record["job_id"], "ok", launcher=self.launcher.describe())
        self.log.info("rank_started", f"{record['job_id']}: {what} started ({self.launcher.describe()})")

    def _set(self, record: dict[str, Any], state: SiteState, detail: str) -> None:
        record["state"], record["detail"] = str(state), detail[:2000]
        self._save(record)

    def _report(self, record: dict[str, Any]) -> None:
        try:
            self.channel.call(
                wire.SiteRpc.REPORT,
                {"job": record["job_id"], "state": record["state"], "detail": record.get("detail", "")},
                self.settings.rpc_timeout,
            )
        except errors.HpcflareError as exc:
            self.log.warning("report_failed", f"{record['job_id']}: report {record['state']} later: {exc}")
            return
        record["reported"] = [record["state"], record.get("detail", "")]
        self._save(record)
