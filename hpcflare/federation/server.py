"""The standing server: ``hpcflare federation serve --kit SERVER_KIT``.

A long-lived process on one fixed port. Site agents (outbound connections only) and admins reach it over mutual
TLS with their startup kits; the certificate decides who is calling, and its participant's role which service it
may use (sites: hpcflare.federation.Site, admins: hpcflare.federation.Admin). It keeps every job in a
:class:`~hpcflare.federation.store.JobStore` and drives each one:

    submitted -> waiting_for_sites -> running -> done | failed | aborted

A job waits until every site it names has accepted it (its agent online, the job within the site's policy) or
``settings.site_join_timeout`` passed; it then runs with the sites that accepted (>= min_clients) or fails
naming the sites that refused or never answered. Its server rank is a process of its own (local, or an sbatch
job from server.yaml) listening on one of ``job_ports``; the job's sites reach it through the standing server's
own port (:mod:`~hpcflare.federation.job_proxy`), or there directly with ``job_routing: ports``. A server
restarted mid-job re-attaches to the server ranks still running, and the jobs complete.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from hpcflare import __version__, errors
from hpcflare.exitcodes import describe
from hpcflare.federation import wire
from hpcflare.federation.admin_service import AdminService
from hpcflare.federation.audit import AuditLog
from hpcflare.federation.channel import GRPC_OPTIONS
from hpcflare.federation.config import ServerConfig
from hpcflare.federation.job_proxy import JobProxy
from hpcflare.federation.launchers import RankState, Resources, make_launcher
from hpcflare.federation.metrics import FederationMetrics
from hpcflare.federation.server_ranks import ServerRanks
from hpcflare.federation.site_service import SiteService
from hpcflare.federation.store import FINISHED, FedJob, FedJobState, JobStore, SiteState
from hpcflare.job import FINAL_STATES, JobState
from hpcflare.monitoring import Exporter
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime import flower
from hpcflare.security.tls import StartupKit


class FederationServer(ServerRanks):
    def __init__(self, kit: StartupKit, config: ServerConfig, log: RankLogger) -> None:
        if kit.role != "server":
            raise errors.ConfigError(
                f"{kit.path} is the kit of {kit.name} (role {kit.role}), not of the server"
            )
        for problem in kit.self_check():
            raise errors.CertificateError(f"{problem}; sites and admins would refuse this server")
        self.kit, self.config, self.log = kit, config, log
        self.settings = config.settings
        self.store = JobStore(config.workspace)
        self.audit = AuditLog(config.workspace / "audit.jsonl")
        self.launcher = make_launcher(config.launcher, config.slurm)
        self.cv = threading.Condition()
        self.sites_seen: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        sites = sum(role == "client" for role in kit.participants.values())
        proxied = config.job_routing == "proxy"
        frames = max(wire.MAX_MESSAGE_BYTES, self.settings.max_frame_bytes if proxied else 0)
        threads = 16 + (8 if proxied else 2) * sites  # a proxied site holds heartbeat, task poll, transfers
        self.grpc = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="federation"),
            options=[
                *(o for o in GRPC_OPTIONS if not o[0].endswith("_message_length")),
                ("grpc.max_send_message_length", frames),
                ("grpc.max_receive_message_length", frames),
            ],
        )
        self.proxy = JobProxy(self, threads) if proxied else None
        self.grpc.add_generic_rpc_handlers(
            [SiteService(self).handler(), AdminService(self).handler(), *([self.proxy] if self.proxy else [])]
        )
        try:
            self.port = self.grpc.add_secure_port(f"{config.host}:{config.port}", kit.server_credentials())
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise errors.ConfigError(
                f"cannot listen on {config.host}:{config.port}: the port is in use (another standing server?) "
                "or not allowed; pick another with --port or server.yaml port"
            )
        self._thread = threading.Thread(target=self._drive, name="federation-jobs", daemon=True)
        self.metrics = FederationMetrics(self, kit.project)
        self.audit.listeners.append(self.metrics.on_audit)
        self.exporter = Exporter(
            config.metrics,
            self.metrics.registry,
            self.settings.metrics_interval,
            log,
            kit.project,
            on_drop=self.metrics.statsd_drops.labels(kit.project).inc,
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FederationServer:
        for job in self.store.jobs.values():  # said before the port opens: whoever reaches it sees this first
            if job.state == FedJobState.RUNNING:
                self.log.info("job_reattached", f"{job.job_id}: looking after its running server rank again")
        self.exporter.start()  # a taken metrics port ends the start here, naming the setting
        self.grpc.start()
        self._thread.start()
        self.log.info(
            "federation_started",
            f"standing server {self.kit.name} of project {self.kit.project} listening on port {self.port}; "
            f"job server ranks on ports {self.config.job_ports[0]}-{self.config.job_ports[1]} "
            f"({self.launcher.describe()}; "
            + ("sites reach them through this port" if self.proxy else "sites connect to them there")
            + f"); workspace {self.config.workspace}",
            port=self.port,
            version=__version__,
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.cv:
            self.cv.notify_all()
        self.grpc.stop(grace=1).wait()
        if self.proxy is not None:
            self.proxy.close()
        self.exporter.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def changed(self, job: FedJob) -> None:
        """Persist a job's change and wake every long-poll that waits on it."""
        self.store.save(job)
        with self.cv:
            self.cv.notify_all()

    # ------------------------------------------------------------------ driving jobs
    def _drive(self) -> None:
        while not self._stop.is_set():
            for job in list(self.store.jobs.values()):
                if job.state in FINISHED:
                    continue
                try:
                    self._step(job)
                except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the others
                    self._finish(job, FedJobState.FAILED, f"the standing server could not drive it: {exc!r}")
                    self.log.error("job_error", f"{job.job_id}: {exc!r}", job=job.job_id)
            with self.cv:
                self.cv.wait(self.settings.federation_check_interval)

    def _step(self, job: FedJob) -> None:
        if job.state == FedJobState.SUBMITTED:
            job.state, job.message = (
                FedJobState.WAITING_FOR_SITES,
                f"waiting for {len(job.sites)} site(s) to accept",
            )
            self.changed(job)
        if job.state == FedJobState.WAITING_FOR_SITES:
            self._await_sites(job)
        elif job.state == FedJobState.RUNNING:
            self._watch_rank(job)

    def _await_sites(self, job: FedJob) -> None:
        states = {site: job.site_state(site) for site in job.sites}
        accepted = [s for s, st in states.items() if st == SiteState.ACCEPTED]
        refused = {
            s: job.site_states[s].get("detail", "") for s, st in states.items() if st == SiteState.REFUSED
        }
        silent = [s for s, st in states.items() if st == SiteState.OFFERED]
        waited = time.time() - job.submitted
        if not refused and silent and waited < self.settings.site_join_timeout:
            return  # nothing to decide yet
        groups = self.store.job_dir(job.job_id).load_config().client_groups

        def clients(sites: list[str]) -> int:  # min_clients counts an institution's virtual clients
            return sum(len(groups.get(site) or [site]) for site in sites)

        if refused and clients(job.sites) - clients(list(refused)) < job.min_clients:
            self._finish(
                job,
                FedJobState.FAILED,
                "POLICY_REFUSED: "
                + "; ".join(f"{s}: {why}" for s, why in refused.items())
                + f" (min_clients={job.min_clients} cannot be met)",
            )
            return
        if silent and waited < self.settings.site_join_timeout:
            return
        if clients(accepted) < job.min_clients:
            self._finish(
                job,
                FedJobState.FAILED,
                f"only {len(accepted)} of {len(job.sites)} sites accepted within settings.site_join_timeout="
                f"{self.settings.site_join_timeout:g}s, with {clients(accepted)} clients (min_clients="
                f"{job.min_clients}); never answered: {silent}"
                + (f"; refused: {sorted(refused)}" if refused else "")
                + ". Are their site agents running? `hpcflare admin sites` shows which are connected",
            )
            return
        for site in silent:
            job.site_states[site] = {
                "state": str(SiteState.LEFT_OUT),
                "detail": f"did not answer within settings.site_join_timeout={self.settings.site_join_timeout:g}s",
                "updated": time.time(),
            }
        self._start_rank(job, accepted)

    def _start_rank(self, job: FedJob, accepted: list[str]) -> None:
        job_dir = self.store.job_dir(job.job_id)
        config = job_dir.load_config()
        grouped = config.grouped()
        config.clients = [s for s in config.clients if grouped.get(s, s) in accepted]
        config.client_groups = {h: sites for h, sites in config.client_groups.items() if h in accepted}
        config.min_clients = min(config.min_clients, len(config.clients))
        job_dir.save_config(config)
        port = self._free_port()
        command = [sys.executable, "-m", "hpcflare.runtime.launch", "--job-dir", str(job_dir.root)]
        # behind the proxy, a server rank on this machine is reached by the standing server only
        job.routed = self.proxy is not None and not flower.is_flower(config)
        bind = "127.0.0.1" if job.routed and self.launcher.kind == "local" else self.config.host
        command += ["--role", "server", "--bind", bind, "--port", str(port), "--quiet"]
        env = {"HPCFLARE_KIT": str(self.kit.path)}
        record = self.launcher.start("server", command, env, job_dir.root / "launch", Resources())
        job.server_rank = {**record, "command": command, "env": env}
        job.port = port
        job.address = f":{port}" if self.launcher.kind == "local" else ""
        job.state, job.message = FedJobState.RUNNING, f"running with {len(config.clients)} site(s)"
        self.log.info("job_started", f"{job.job_id}: server rank started on port {port} for {config.clients}")
        self.changed(job)

    def _watch_rank(self, job: FedJob) -> None:
        job_dir = self.store.job_dir(job.job_id)
        if not job.address:
            try:
                published = json.loads((job_dir.rendezvous_dir / "server.json").read_text())
                job.address = str(published["address"])
                self.changed(job)
            except (FileNotFoundError, ValueError, KeyError):
                pass
        self._beacons(job, job_dir.rendezvous_dir)
        status = self.launcher.status(job.server_rank)
        if status.state in (RankState.PENDING, RankState.RUNNING):
            self._end_if_sites_failed(job)
            return
        final = job_dir.read_status()
        if final.get("state") not in FINAL_STATES and not job.server_rank.get("ended_by"):
            if self._restart_rank(job, status.detail or describe(status.exit_code or 1)):
                return
        if job.server_rank.get("ended_by"):
            job.exit_code = status.exit_code
            self._finish(job, FedJobState.FAILED, str(job.server_rank["ended_by"]))
        elif status.state == RankState.EXITED and final.get("state") == JobState.COMPLETED:
            job.exit_code = status.exit_code
            self._finish(job, FedJobState.DONE, str(final.get("message") or "completed"))
        elif final.get("state") == JobState.ABORTED:
            job.exit_code = status.exit_code
            self._finish(job, FedJobState.ABORTED, str(final.get("message") or "aborted"))
        else:
            job.exit_code = status.exit_code
            cause = final.get("message") or status.detail or (describe(status.exit_code or 1))
            self._finish(job, FedJobState.FAILED, f"the job's server rank ended: {cause}")

    def _finish(self, job: FedJob, state: FedJobState, message: str) -> None:
        job.state, job.message = state, message
        if self.proxy is not None and job.address:
            self.proxy.forget(job.address)
        (self.log.info if state == FedJobState.DONE else self.log.warning)(
            f"job_{state}", f"{job.job_id} {state}: {message}", job=job.job_id
        )
        self.changed(job)

    def abort(self, job: FedJob, who: str) -> None:
        if job.state in FINISHED:
            raise errors.ConfigError(f"job {job.job_id} already ended ({job.state}); nothing to abort")
        if job.server_rank:
            self.launcher.cancel(job.server_rank)
        self._finish(job, FedJobState.ABORTED, f"aborted by {who}")

    def note_site(self, site: str, header: dict[str, Any]) -> None:
        self.sites_seen[site] = {
            "last_seen": time.time(),
            "version": str(header.get("version", ""))[:40],
            "launcher": str(header.get("launcher", ""))[:200],
            "host": str(header.get("host", ""))[:200],
        }
