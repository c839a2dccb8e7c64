"""A job's metrics in Prometheus' data model: lifecycle counters fed by the server's own events, and gauges read
from the server's state whenever they are collected.

Names follow Prometheus conventions (``hpcflare_`` prefix, ``_total`` counters, ``_seconds``/``_bytes`` units);
every series carries the ``job`` label, system series also ``role``, ``rank`` and ``host``, per-site series
``site``. Cardinality is bounded: sites beyond :attr:`MetricsConfig.site_series_cap` are reported under the
client rank that runs them, ranks beyond the cap under ``rank="others"``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hpcflare.monitoring.system import SystemSample

ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf"))

REFUSALS = {
    "register_refused": "registration",
    "identity_refused": "identity",
    "tls_refused": "tls",
    "streams_refused": "flood",
    "host_saturated": "flood",
    "result_rejected": "bad_result",
    "tracking_dropped": "tracking_cap",
    "tracking_budget_spent": "tracking_cap",
    "tracking_malformed": "tracking_malformed",
}
"""Server events that refuse something, by the reason label they count under."""

RESULTS = {
    "result_accepted": "accepted",
    "partial_accepted": "accepted",
    "result_rejected": "rejected",
    "result_late": "late",
    "late_result": "late",
    "partial_late": "late",
}


@dataclasses.dataclass
class HostView:
    """What the server looks like now, as its metrics need it (built by the runtime's host monitor)."""

    round: int = 0
    num_rounds: int = 0
    phase: str = ""
    sites: dict[str, str] = dataclasses.field(default_factory=dict)
    """site -> its state (registered, active, done, failed, dead, excluded; 'pending' before it registered)."""
    last_seen: dict[str, float] = dataclasses.field(default_factory=dict)
    """site -> seconds since the host last heard of it."""
    rank_of: dict[str, str] = dataclasses.field(default_factory=dict)
    """site -> the client rank that runs it (virtual clients)."""
    uploads_waiting: int = 0
    link_bytes: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    """(link, 'in' | 'out') -> bytes over the link to that direct child since the server started."""
    samples: dict[str, tuple[str, SystemSample]] = dataclasses.field(default_factory=dict)
    """rank -> (its role, its latest system sample)."""


class JobMetrics:
    """One job's registry. Feed it :meth:`on_event` (a rank logger listener) and a ``view`` of the host."""

    def __init__(self, job_id: str, view: Callable[[], HostView], site_cap: int = 1000) -> None:
        self.job_id, self.site_cap = job_id, site_cap
        self.registry = CollectorRegistry()
        r, job = self.registry, ["job"]
        self.registrations = Counter(
            "hpcflare_registrations", "Sites registered (again after a restart too)", job, registry=r
        )
        self.rounds = Counter(
            "hpcflare_rounds_completed", "Rounds completed and checkpointed", job, registry=r
        )
        self.stragglers = Counter("hpcflare_stragglers", "Sites a round closed without", job, registry=r)
        self.excluded = Counter("hpcflare_sites_excluded", "Sites the job started without", job, registry=r)
        self.failures = Counter("hpcflare_site_failures", "Sites that ended with an error", job, registry=r)
        self.results = Counter("hpcflare_results", "Results by outcome", ["job", "outcome"], registry=r)
        self.refusals = Counter(
            "hpcflare_refusals", "Requests refused, by reason", ["job", "reason"], registry=r
        )
        self.round_seconds = Histogram(
            "hpcflare_round_duration_seconds",
            "Wall time of a round, task sent to model kept",
            job,
            registry=r,
            buckets=ROUND_BUCKETS,
        )
        self.aggregate_seconds = Histogram(
            "hpcflare_aggregation_seconds",
            "Time to finish a round's aggregate",
            job,
            registry=r,
            buckets=STEP_BUCKETS,
        )
        self.checkpoint_seconds = Histogram(
            "hpcflare_checkpoint_seconds",
            "Time to write a round's checkpoint durably",
            job,
            registry=r,
            buckets=STEP_BUCKETS,
        )
        self.statsd_drops = Counter(
            "hpcflare_statsd_dropped", "StatsD packets that could not be sent", job, registry=r
        )
        for family in (
            self.registrations,
            self.rounds,
            self.stragglers,
            self.excluded,
            self.failures,
            self.statsd_drops,
        ):
            family.labels(job_id)  # present at 0 from the start, so rate() works from the first scrape
        for outcome in sorted(set(RESULTS.values())):
            self.results.labels(job_id, outcome)
        self._state = _StateCollector(self, view)
        r.register(self._state)
        self._lock = threading.Lock()

    def on_event(self, record: dict[str, Any]) -> None:
        """A rank logger listener: the server's events, counted. Never raises."""
        try:
            self._count(record)
        except Exception:  # noqa: BLE001 - a metric must never take a job down
            pass

    def _count(self, record: dict[str, Any]) -> None:
        event, job = record.get("event"), self.job_id
        if event == "client_registered":
            self.registrations.labels(job).inc()
        elif event == "round_completed":
            self.rounds.labels(job).inc()
            self.round_seconds.labels(job).observe(float(record.get("seconds") or 0.0))
            if "aggregate_seconds" in record:
                self.aggregate_seconds.labels(job).observe(float(record["aggregate_seconds"]))
            if "checkpoint_seconds" in record:
                self.checkpoint_seconds.labels(job).observe(float(record["checkpoint_seconds"]))
        elif event == "stragglers":
            self.stragglers.labels(job).inc(len(record.get("stragglers") or []))
        elif event == "clients_excluded":
            self.excluded.labels(job).inc(len(record.get("missing") or []))
        elif event == "client_failed":
            self.failures.labels(job).inc()
        if event in RESULTS:
            self.results.labels(job, RESULTS[event]).inc()
        if event in REFUSALS:
            self.refusals.labels(job, REFUSALS[event]).inc()


class _StateCollector(Collector):
    """Gauges (and the link byte counters) read from the host at collection time."""

    def __init__(self, owner: JobMetrics, view: Callable[[], HostView]) -> None:
        self.owner, self.view = owner, view

    def describe(self) -> list[Metric]:
        return []  # families depend on the job's state; described when collected

    def collect(self) -> Iterator[Metric]:
        job, cap = self.owner.job_id, self.owner.site_cap
        try:
            view = self.view()
        except Exception:  # noqa: BLE001 - a host mid-shutdown: nothing to report this time
            return
        yield _gauge("hpcflare_round", "The round in progress (or last completed)", {(): view.round}, job)
        yield _gauge("hpcflare_rounds_planned", "Rounds the job will run at most", {(): view.num_rounds}, job)
        states: dict[tuple[str, ...], float] = {
            (s,): 0 for s in ("pending", "registered", "active", "done", "failed", "dead", "excluded")
        }
        for state in view.sites.values():
            states[(state,)] = states.get((state,), 0) + 1
        yield _gauge("hpcflare_sites", "Sites by state", states, job, ["state"])
        yield _gauge(
            "hpcflare_sites_live",
            "Sites registered and not ended",
            {(): states[("registered",)] + states[("active",)]},
            job,
        )
        yield _gauge(
            "hpcflare_uploads_waiting",
            "Uploads being received or queued for a slot",
            {(): view.uploads_waiting},
            job,
        )
        per_site = len(view.sites) <= cap
        seen: dict[tuple[str, ...], float] = {}
        for site, age in view.last_seen.items():
            key = (site,) if per_site else (view.rank_of.get(site, "others"),)
            seen[key] = min(seen.get(key, age), age)
        label = "site" if per_site else "rank"
        yield _gauge(
            "hpcflare_last_seen_seconds",
            f"Seconds since the server last heard of a {label}",
            seen,
            job,
            [label],
        )
        links: dict[tuple[str, ...], float] = {}
        names = sorted({link for link, _ in view.link_bytes})
        kept = set(names[:cap])
        for (link, direction), count in view.link_bytes.items():
            key = (link if link in kept else "others", direction)
            links[key] = links.get(key, 0) + count
        family = CounterMetricFamily(
            "hpcflare_link_bytes",
            "Bytes over each link to a direct child",
            labels=["job", "link", "direction"],
        )
        for (link, direction), count in sorted(links.items()):
            family.add_metric([job, link, direction], count)
        yield family
        yield from _system(view.samples, job, cap)


def _gauge(
    name: str, doc: str, values: dict[tuple[str, ...], float], job: str, labels: list[str] | None = None
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["job", *(labels or [])])
    for key, value in sorted(values.items()):
        family.add_metric([job, *key], float(value))
    return family


SYSTEM = (
    (
        "hpcflare_process_cpu_percent",
        "CPU use of the rank's process, percent of one core",
        "cpu_percent",
        "mean",
    ),
    ("hpcflare_process_resident_memory_bytes", "Resident memory of the rank's process", "rss_bytes", "sum"),
    ("hpcflare_process_threads", "Threads of the rank's process", "threads", "sum"),
    ("hpcflare_process_open_fds", "Open file descriptors of the rank's process", "open_fds", "sum"),
    ("hpcflare_host_load1", "One-minute load average of the rank's node", "load1", "mean"),
    ("hpcflare_host_memory_used_bytes", "Memory in use on the rank's node", "host_memory_used_bytes", "mean"),
    ("hpcflare_host_memory_total_bytes", "Memory of the rank's node", "host_memory_total_bytes", "mean"),
)


def _system(samples: dict[str, tuple[str, SystemSample]], job: str, cap: int) -> Iterator[Metric]:
    ranks = sorted(samples)
    kept, others = ranks[:cap], ranks[cap:]
    labels = ["job", "role", "rank", "host"]
    for name, doc, field, fold in SYSTEM:
        family = GaugeMetricFamily(name, doc, labels=labels)
        for rank in kept:
            role, sample = samples[rank]
            family.add_metric([job, role, rank, sample.host], float(getattr(sample, field)))
        if others:
            values = [float(getattr(samples[r][1], field)) for r in others]
            folded = sum(values) if fold == "sum" else sum(values) / len(values)
            family.add_metric([job, "client", "others", ""], folded)
        yield family
    cpu = CounterMetricFamily("hpcflare_process_cpu_seconds", "CPU time of the rank's process", labels=labels)
    for rank in kept:
        role, sample = samples[rank]
        cpu.add_metric([job, role, rank, sample.host], sample.cpu_seconds)
    yield cpu
    gpu_labels = [*labels, "gpu"]
    util = GaugeMetricFamily("hpcflare_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=gpu_labels)
    used = GaugeMetricFamily("hpcflare_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=gpu_labels)
    total = GaugeMetricFamily("hpcflare_gpu_memory_total_bytes", "GPU memory (NVML)", labels=gpu_labels)
    for rank in kept:
        role, sample = samples[rank]
        for gpu in sample.gpus:
            key = [job, role, rank, sample.host, str(gpu.index)]
            util.add_metric(key, gpu.utilization)
            used.add_metric(key, gpu.memory_used_bytes)
            total.add_metric(key, gpu.memory_total_bytes)
    yield from (util, used, total)
