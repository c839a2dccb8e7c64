"""A round host's view for metrics: its children's system samples, bytes per link, and a :class:`HostView`.

Samples travel in heartbeats as ``{"samples": {rank: {"role": ..., "sample": {...}}}}``. A host keeps the
latest sample of each rank it may speak for (itself, its children, the ranks behind a relay), and a relay sends
what it kept upstream in its own heartbeats: the server learns every rank's state from its direct links alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from hpcflare.errors import MalformedMessageError
from hpcflare.job import JobConfig
from hpcflare.monitoring.metrics import HostView
from hpcflare.monitoring.system import SystemSample, sampler
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.phase import HostPhase
from hpcflare.runtime.host.round import Round
from hpcflare.settings import Settings


class MonitoredHost(Protocol):
    """What the monitor reads of its round host (a protocol: the host module imports this one)."""

    role: str
    config: JobConfig
    settings: Settings
    log: RankLogger
    members: Membership
    hosts: dict[str, set[str] | None]
    round: Round | None
    phase: HostPhase
    _uploading: dict[str, Any]


ROLES = ("server", "relay", "client rank", "client")
MAX_SAMPLES_PER_HEARTBEAT = 10_000
"""Samples one heartbeat may carry (a relay's children); more is a malformed heartbeat's, and dropped."""


class HostMonitor:
    def __init__(self, host: MonitoredHost) -> None:
        self.host = host
        self._lock = threading.Lock()
        self.samples: dict[str, tuple[str, SystemSample]] = {}
        self._unsent: set[str] = set()
        self.link_bytes: dict[tuple[str, str], int] = {}
        self._warned: set[str] = set()
        self._rank_of: dict[str, str] | None = None
        self._rank_names: set[str] | None = None

    # ------------------------------------------------------------------ samples
    def take(self, sender: str, samples: Any) -> None:
        """The samples in ``sender``'s heartbeat: kept for the ranks it may speak for, malformed ones dropped
        (one warning per sender)."""
        if not samples:
            return
        try:
            if not isinstance(samples, dict) or len(samples) > MAX_SAMPLES_PER_HEARTBEAT:
                raise MalformedMessageError("samples must be a mapping of at most 10,000 ranks")
            parsed = {}
            for rank, entry in samples.items():
                rank = str(rank)[:128]
                if rank != sender and sender not in self.host.hosts:  # relays and client ranks forward
                    raise MalformedMessageError(f"{sender} may not report for {rank!r:.60}")
                if rank not in self._known():
                    raise MalformedMessageError(f"{rank!r:.60} is no rank of this job")
                if not isinstance(entry, dict) or entry.get("role") not in ROLES:
                    raise MalformedMessageError(f"sample of {rank!r:.60} names no known role")
                parsed[rank] = (str(entry["role"]), SystemSample.from_wire(entry.get("sample")))
        except MalformedMessageError as exc:
            if sender not in self._warned:
                self._warned.add(sender)
                self.host.log.warning(
                    "samples_dropped", f"system samples from {sender} dropped: {exc}", site=sender
                )
            return
        with self._lock:
            self.samples.update(parsed)
            self._unsent.update(parsed)

    def heartbeat_samples(self, name: str, role: str) -> dict[str, Any]:
        """For this host's own heartbeat upstream: its sample when one is due, and its children's new ones."""
        own = sampler().due(f"host:{name}", self.host.settings.metrics_interval)
        with self._lock:
            out = {
                rank: {"role": self.samples[rank][0], "sample": self.samples[rank][1].to_wire()}
                for rank in self._unsent
            }
            self._unsent.clear()
        if own is not None:
            out[name] = {"role": role, "sample": own.to_wire()}
        return {"samples": out} if out else {}

    def own_sample(self, name: str, role: str) -> None:
        """This host's own sample, kept beside its children's (the server samples itself this way)."""
        sample = sampler().due(f"host:{name}", self.host.settings.metrics_interval)
        if sample is not None:
            with self._lock:
                self.samples[name] = (role, sample)

    # ------------------------------------------------------------------ bytes per link
    def add_bytes(self, link: str, direction: str, count: int) -> None:
        if count:
            with self._lock:
                key = (link, direction)
                self.link_bytes[key] = self.link_bytes.get(key, 0) + count

    def counted(self, frames: Iterator[bytes], link: str, direction: str) -> Iterator[bytes]:
        total = 0
        try:
            for frame in frames:
                total += len(frame)
                yield frame
        finally:
            self.add_bytes(link, direction, total)

    def _known(self) -> set[str]:
        """The job's rank names (sites, client ranks, relays, the server): the only names samples may carry,
        so what this host keeps is bounded by the job's size."""
        if self._rank_names is None:
            config = self.host.config
            self._rank_names = {"server", *config.clients, *config.client_units(), *config.relay_names()}
        return self._rank_names

    # ------------------------------------------------------------------ the view
    def _ranks(self) -> dict[str, str]:
        """site -> the client rank that runs it (computed once: the job's layout does not change)."""
        if self._rank_of is None:
            units = self.host.config.client_units()
            self._rank_of = {site: rank for rank, sites in units.items() for site in sites}
        return self._rank_of

    def view(self) -> HostView:
        host, now = self.host, time.monotonic()
        if host.role == "server":
            self.own_sample("server", "server")
        records = {r.site: r for r in host.members.records()}
        sites = {site: "pending" for site in host.config.clients}
        seen = {}
        for site, record in records.items():
            if site in sites:
                sites[site] = str(record.state)
                seen[site] = max(0.0, now - record.last_seen)
        rnd = host.round
        with self._lock:
            samples = dict(self.samples)
            links = dict(self.link_bytes)
        return HostView(
            round=rnd.number if rnd is not None else 0,
            num_rounds=host.config.num_rounds,
            phase=str(host.phase),
            sites=sites,
            last_seen=seen,
            rank_of=self._ranks(),
            uploads_waiting=len(host._uploading),
            link_bytes=links,
            samples=samples,
        )


def payload_bytes(params: Any) -> int:
    """Tensor bytes of an upload, whatever route it took (stream, memory file, staging)."""
    if hasattr(params, "nbytes"):
        return int(params.nbytes)
    if isinstance(params, dict):
        return sum(int(getattr(v, "nbytes", 0)) for v in params.values())
    return 0
