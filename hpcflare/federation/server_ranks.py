"""The standing server's watch over its jobs' server ranks: ports for them, the sites' start-up beacons, and
an early end for a job whose sites failed before its first round."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcflare import errors
from hpcflare.federation.config import ServerConfig
from hpcflare.federation.launchers import Launcher, Resources
from hpcflare.federation.store import FedJob, FedJobState, JobStore, SiteState
from hpcflare.fileio import atomic_write_json
from hpcflare.job import JobDir, JobState
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.beacon import beacon_dir
from hpcflare.settings import Settings

SITE_BEACON_PREFIX = "site-agent-"
"""Start-up beacons the standing server writes for sites whose agents report their rank queued or starting, so the
job's server waits for them as for a live client rank still on its way (settings.startup_timeout)."""


class ServerRanks:
    """Mixed into :class:`~hpcflare.federation.server.FederationServer`."""

    config: ServerConfig
    settings: Settings
    store: JobStore
    launcher: Launcher
    port: int
    sites_seen: dict[str, dict[str, Any]]
    cv: threading.Condition
    log: RankLogger
    changed: Callable[[FedJob], None]

    def _free_port(self) -> int:
        taken = {j.port for j in self.store.jobs.values() if j.state == FedJobState.RUNNING}
        first, last = self.config.job_ports
        for port in range(first, last + 1):
            if port in taken or port == self.port:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((self.config.host, port))
                except OSError:
                    continue
            return port
        raise errors.ConfigError(
            f"every port of job_ports {first}-{last} is in use: widen job_ports in server.yaml"
        )

    def _restart_rank(self, job: FedJob, cause: str) -> bool:
        """A job's server rank that died mid-job (killed, its node lost) starts again on the same port and goes on
        from its last checkpoint; its sites' ranks find it there and register again under their tokens. At most
        settings.max_requeues times; False when that is spent."""
        restarts = int(job.server_rank.get("restarts") or 0)
        if restarts >= self.settings.max_requeues or not job.server_rank.get("command"):
            return False
        job_dir = self.store.job_dir(job.job_id)
        for stale in job_dir.rendezvous_dir.glob("*.json"):
            stale.unlink(missing_ok=True)
        job_dir.write_status(JobState.RESUMING, message=f"its server rank ended ({cause}); resumed")
        record = self.launcher.start(
            "server", job.server_rank["command"], job.server_rank["env"], job_dir.root / "launch", Resources()
        )
        job.server_rank = {
            **record,
            "command": job.server_rank["command"],
            "env": job.server_rank["env"],
            "restarts": restarts + 1,
        }
        if self.launcher.kind != "local":
            job.address = ""  # published again by the new rank
        job.message = f"server rank restarted from its last checkpoint ({restarts + 1}x; it ended: {cause})"
        self.log.warning("job_server_restarted", f"{job.job_id}: {job.message}", job=job.job_id)
        self.changed(job)
        return True

    def _end_if_sites_failed(self, job: FedJob) -> None:
        """Before its first round, a job whose sites failed at their end (so fewer than min_clients can still
        join) is ended now, naming each site's own cause, rather than at its server's registration timeout."""
        if job.server_rank.get("ended_by"):
            return
        job_dir = self.store.job_dir(job.job_id)
        if job_dir.read_status().get("state") not in (JobState.PENDING, JobState.REGISTRATION):
            return
        config = job_dir.load_config()
        failed = {
            s: str(job.site_states[s].get("detail", ""))
            for s in config.participants()
            if job.site_state(s) in (SiteState.FAILED, SiteState.ABORTED)
        }
        grouped = config.grouped()
        left = [
            c for c in config.clients if grouped.get(c, c) not in failed
        ]  # virtual clients count one each
        if not failed or len(left) >= config.min_clients:
            return
        job.server_rank["ended_by"] = (
            f"{len(failed)} of {len(config.participants())} sites failed before the first round (min_clients="
            f"{config.min_clients}): " + "; ".join(f"{s}: {why}" for s, why in failed.items())
        )
        self.launcher.cancel(job.server_rank)
        self.changed(job)

    def _beacons(self, job: FedJob, rendezvous_dir: Path) -> None:
        """Sites whose agents report their rank queued or starting look, to the job's server, like live client
        ranks still on their way (start-up grace); a site's beacon goes when its agent stops saying so."""
        folder = beacon_dir(rendezvous_dir)
        fresh = 2 * self.settings.federation_poll_wait + self.settings.federation_check_interval
        groups = JobDir(rendezvous_dir.parent).load_config().client_groups  # an institution's virtual clients
        for site in job.sites:
            path = folder / f"{SITE_BEACON_PREFIX}{site}.json"
            entry = job.site_states.get(site) or {}
            starting = entry.get("state") in (SiteState.ACCEPTED, SiteState.PENDING, SiteState.RUNNING)
            seen = self.sites_seen.get(site, {}).get("last_seen", 0.0)
            if starting and time.time() - seen <= fresh:
                atomic_write_json(
                    path,
                    {
                        "rank": f"{SITE_BEACON_PREFIX}{site}",
                        "sites": groups.get(site, [site]),
                        "via": "agent",
                    },
                )
            else:
                path.unlink(missing_ok=True)
