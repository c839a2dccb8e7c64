"""The standing server's own metrics: its jobs by state, the sites it hears from, and every audited action by
outcome (submissions, refusals, aborts, downloads). Exported like a job's (server.yaml's ``metrics:`` section:
Prometheus endpoint, textfile, StatsD); each job's server rank exports its own job's metrics besides."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hpcflare.federation.store import FedJobState, JobStore
from hpcflare.settings import Settings


class _Server(Protocol):
    store: JobStore
    settings: Settings
    sites_seen: dict[str, dict[str, Any]]


class FederationMetrics(Collector):
    def __init__(self, server: _Server, project: str) -> None:
        self.server, self.project = server, project
        self.registry = CollectorRegistry()
        self.actions = Counter(
            "hpcflare_federation_actions",
            "Audited actions (admins' and the server's) by outcome",
            ["project", "action", "outcome"],
            registry=self.registry,
        )
        self.statsd_drops = Counter(
            "hpcflare_statsd_dropped",
            "StatsD packets that could not be sent",
            ["project"],
            registry=self.registry,
        )
        self.registry.register(self)

    def on_audit(self, action: str, outcome: str) -> None:
        self.actions.labels(self.project, action[:40], outcome[:40]).inc()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "hpcflare_federation_jobs", "Jobs in the store by state", labels=["project", "state"]
        )
        counts = {str(state): 0 for state in FedJobState}
        for job in list(self.server.store.jobs.values()):
            counts[str(job.state)] = counts.get(str(job.state), 0) + 1
        for state, count in sorted(counts.items()):
            jobs.add_metric([self.project, state], count)
        yield jobs
        now, fresh = time.time(), 2 * self.server.settings.federation_poll_wait + 5
        seen = dict(self.server.sites_seen)
        connected = GaugeMetricFamily(
            "hpcflare_federation_sites_connected",
            "Sites whose agent polled within two poll waits",
            labels=["project"],
        )
        connected.add_metric([self.project], sum(now - s["last_seen"] < fresh for s in seen.values()))
        yield connected
        last = GaugeMetricFamily(
            "hpcflare_federation_site_last_poll_seconds",
            "Seconds since each site's agent last polled",
            labels=["project", "site"],
        )
        for site, info in sorted(seen.items()):
            last.add_metric([self.project, site], max(0.0, now - info["last_seen"]))
        yield last
