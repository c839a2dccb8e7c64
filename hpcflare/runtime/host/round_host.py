"""What the server and every relay share: hosting rounds for children.

A RoundHost keeps its children's membership, hands out the current task (long poll), serves the current
model from one encoded copy (many children pull concurrently, no lock), and validates and folds uploads
into the round's aggregator the moment they arrive. The server drives rounds from the job config; a relay
mirrors the server's rounds and sends one partial aggregate up per round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hpcflare import errors
from hpcflare.job import JobConfig
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.staging import Stager
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.intake import UploadIntake
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.monitor import HostMonitor
from hpcflare.runtime.host.phase import HostPhase as HostPhase  # re-exported: roles name it here
from hpcflare.runtime.host.round import Round
from hpcflare.runtime.host.serving import ModelServing
from hpcflare.runtime.host.tracking import TrackingQuota
from hpcflare.runtime.host.unary import UnaryRpcs
from hpcflare.settings import Settings
from hpcflare.strategy.api import ClientUpdate, RoundPlan, Strategy
from hpcflare.transport.api import LocalHandler, Peer

PER_SITE_LOG_LIMIT = 64
"""Up to this many sites a host writes one human log line per site event (registered, result accepted,
finished); beyond it those go to the JSONL log only and the human log gets summaries."""


class RoundHost(UnaryRpcs, UploadIntake, ModelServing, LocalHandler):
    role = "host"

    def __init__(
        self,
        config: JobConfig,
        settings: Settings,
        log: RankLogger,
        strategy: Strategy,
        members: Membership,
        stager: Stager | None = None,
    ) -> None:
        self.config, self.settings, self.log, self.strategy = config, settings, log, strategy
        self.members = members
        members.on_stall = self._stalled
        self.site_log = log.info if len(members.expected) <= PER_SITE_LOG_LIMIT else log.detail
        """How per-site events are logged (see PER_SITE_LOG_LIMIT)."""
        self.hosts: dict[str, set[str] | None] = {}
        """Children that host sites of their own (relays, client ranks) -> the sites they may speak for
        (None: any). They register, vouch in heartbeats, say goodbye and send partial aggregates for those."""
        self.stager = stager
        self.model: GlobalModel | None = None
        self.round: Round | None = None
        self.phase = HostPhase.REGISTRATION
        self.end_reason = ""
        self.host_fault: OSError | None = None
        """A fault of this host's own (its upload spool's disk full): it ends the job with that cause, and no
        site is blamed for it."""
        self.staged: dict[str, Any] | None = None
        self.bytes_sent = 0
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        """Answers, goodbyes, registrations, phase: what the round loop and drain() wait on."""
        self._task_cv = threading.Condition(lock)
        """Only a new task or the end: what every child's long poll waits on. Kept apart from _cv so a result
        does not wake hundreds of idle pollers (O(children^2) wake-ups per round)."""
        self._agg_lock = threading.Lock()
        self._upload_slots = threading.BoundedSemaphore(settings.max_concurrent_uploads)
        self._download_slots = threading.BoundedSemaphore(settings.max_concurrent_downloads)
        self.track_quota = TrackingQuota(settings, log)
        self.monitor = HostMonitor(self)
        """System samples of the ranks this host speaks for, bytes per link, the view metrics are made of."""
        """Caps on each site's tracking records, enforced here whatever the site's client library does."""
        self._goodbyes: set[str] = set()
        self._uploading: dict[str, Any] = {}  # site -> cancel() of its upload in flight (one per site)

    def vouches(self, site: str, token: str) -> bool:
        return self.members.vouches(site, token)

    def on_saturated(self, seconds: float) -> None:
        if seconds < 1.0:
            return  # a moment's queue: heartbeats were late, not lost
        self.members.forgive(seconds)
        self.log.warning(
            "host_saturated",
            f"{self.role} had every worker thread busy for {seconds:.1f}s; its children get that time back "
            f"before anyone is declared dead (raise settings.server_threads if this repeats)",
            seconds=round(seconds, 2),
        )

    def watch_stalls(self) -> None:
        """Start noticing this host's own stalls (see Membership) until the host ends."""
        self.members.watch(lambda: self.phase != HostPhase.ENDED, name=f"{self.role}-stall-watch")

    def _stalled(self, gap: float) -> None:
        self.log.warning(
            "host_stalled",
            f"{self.role} itself was stopped for {gap:.1f}s (SIGSTOP, swapping, a stuck "
            f"filesystem?); its children get that time back before anyone is declared dead "
            f"(settings.heartbeat_timeout={self.settings.heartbeat_timeout:g}s)",
            seconds=round(gap, 2),
        )

    # ------------------------------------------------------------------ hooks
    def register(self, request: dict[str, Any], peer: Peer | None = None) -> dict[str, Any]:
        """A Register from ``peer``, whose certificate (if any) ``authorize`` has checked may act for the site."""
        raise NotImplementedError

    def _add_member(self, request: dict[str, Any], token: str | None = None) -> tuple[Any, Any]:
        """Validate a Register request and record the site -> (record, replaced record)."""
        site = request.get("site")
        if not isinstance(site, str):
            raise errors.MalformedMessageError("Register needs a 'site' string")
        pid = request.get("pid", 0)
        return self.members.register(
            site,
            str(request.get("host", ""))[:256],
            pid if isinstance(pid, int) else 0,
            token=token,
            previous_token=request.get("previous_token"),
        )

    def may_act_for(self, identity: str, site: str) -> bool:
        """May the certificate ``identity`` speak for ``site``? A host child may, for the sites it hosts; a client
        rank may, for its virtual clients (which show its certificate when they have no kit of their own)."""
        sites = self.hosts.get(identity, set())
        return (identity in self.hosts and (sites is None or site in sites)) or self.config.hosting_rank(
            site
        ) == identity

    def accepts_partials_from(self, site: str) -> bool:
        return site in self.hosts

    def live_children(self) -> set[str]:
        """Live sites that answer tasks themselves (host children answer through their sites' partials)."""
        return {s for s in self.members.live() if s not in self.hosts}

    def authorize(self, peer: Peer, site: Any) -> None:
        """On mutual-TLS channels a certificate acts only as its own site, so no site can pose as another."""
        if peer.identity is None or peer.identity == site or self.may_act_for(peer.identity, str(site)):
            return
        self.log.warning(
            "identity_refused",
            f"refused {peer}: its certificate is for {peer.identity!r} but it claims to be site {site!r:.80}",
            identity=peer.identity,
            claimed=str(site)[:80],
        )
        raise errors.UnknownClientError(
            f"certificate {peer.identity!r} may not act as site {site!r:.80}; every "
            "site must use its own startup kit"
        )

    def on_heartbeat(self, site: str, request: dict[str, Any]) -> None:
        """Called for every authenticated heartbeat: a host child vouches for the sites it heard from."""
        self.monitor.take(site, request.get("samples"))
        if site in self.hosts:
            record = self.members.get(site)
            if record is not None and record.last_gap > self.settings.heartbeat_timeout:
                self.log.warning(
                    "host_stalled",
                    f"{site} was silent for {record.last_gap:.1f}s (stopped, swapping, a hung filesystem on its "
                    "node?) and is back; neither it nor the sites it speaks for were declared dead "
                    f"(settings.server_lost_timeout={self.settings.server_lost_timeout:g}s)",
                    host=site,
                    seconds=round(record.last_gap, 2),
                )
            if record is not None:
                record.last_gap = 0.0  # told once
            for child in request.get("children") or []:
                if self.may_act_for(site, str(child)):
                    self.members.touch(child)

    def on_goodbye(self, site: str, status: str, reason: str) -> None:
        """Called after a child said goodbye."""

    def on_exchange(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        """A site's protocol message for the strategy (secure aggregation); a relay passes it on."""
        return self.strategy.exchange(site, request)

    def admit_tracking(self, site: str, records: list[Any]) -> list[Any]:
        """The part of ``site``'s tracking records within its caps for the current round (see TrackingQuota)."""
        return self.track_quota.admit(site, records, self.round.number if self.round is not None else 0)

    def on_track(self, site: str, records: list[Any]) -> None:
        """Tracking records from ``site`` (relays forward their children's in the child's name)."""
        raise errors.MalformedMessageError(f"{self.role} does not take tracking records")

    def _fold(self, rnd: Round, update: ClientUpdate) -> None:
        rnd.fold(update)
        self.site_log(
            "result_accepted",
            f"round {rnd.number}: result from {update.site} accepted (weight {update.weight:g})",
            site=update.site,
            round=rnd.number,
            weight=update.weight,
            metrics=update.metrics,
        )

    # ------------------------------------------------------------------ round lifecycle
    def open_round(
        self,
        number: int,
        model: GlobalModel,
        task_id: str | None = None,
        publish: bool = True,
        plan: RoundPlan | None = None,
        announce: Callable[[Round], None] | None = None,
    ) -> Round:
        """Open round ``number`` on ``model``; ``announce(round)`` runs before any child can take its task."""
        self.model = model
        if self.stager is not None and publish:
            t0 = time.monotonic()
            self.staged = self.stager.publish(model.ref, model.params)
            model.release()
            self.log.info(
                "model_staged",
                f"round {number}: model staged ({self.staged['nbytes'] / 1e6:.1f} MB) in "
                f"{time.monotonic() - t0:.2f}s",
                round=number,
                seconds=time.monotonic() - t0,
                **self.staged,
            )
        if self.round is not None:
            self.round.close()  # one open round per host: nothing is folded into an older one
        with self._cv:
            self.round = rnd = Round(number, self.strategy, model, self._agg_lock, self._cv, task_id, plan)
            if announce is not None:
                announce(rnd)
            self._cv.notify_all()
            self._task_cv.notify_all()
        return rnd

    def silence_allowed(self, record: Any) -> tuple[float, str]:
        """How long ``record`` may be silent: a relay or client rank, and the sites that speak through one, as long as
        a site waits for a lost parent (settings.server_lost_timeout): a stopped, swapping or hung host is not dead,
        and its children (who fail over or end by then) are not either. Anyone else: heartbeat_timeout."""
        s = self.settings
        hosted = record.via in self.hosts or self.config.hosting_rank(record.site) in self.hosts
        if (record.site in self.hosts or hosted) and s.server_lost_timeout > s.heartbeat_timeout:
            return (
                s.server_lost_timeout,
                "settings.server_lost_timeout, for relays, client ranks and their sites",
            )
        return s.heartbeat_timeout, "settings.heartbeat_timeout"

    def expire_dead(self, number: int) -> None:
        for record in self.members.expire(self.silence_allowed):
            self.log.warning(
                "client_dead", f"{record.site} declared dead: {record.reason}", site=record.site, round=number
            )
            with self._cv:
                cancel = self._uploading.pop(record.site, None)
            if cancel is not None:  # a half-open upload from a stopped site must not hold its slot any longer
                self.log.warning(
                    "upload_cancelled",
                    f"round {number}: {record.site}'s upload in flight cancelled: the site is dead",
                    site=record.site,
                    round=number,
                )
                cancel()

    def close_round(self, rnd: Round) -> None:
        """No result is folded into ``rnd`` after this returns."""
        rnd.close()

    def end(self, reason: str) -> None:
        with self._cv:
            self.phase, self.end_reason = HostPhase.ENDED, reason
            self._cv.notify_all()
            self._task_cv.notify_all()

    def drain(self, grace: float) -> None:
        """Give live children up to ``grace`` seconds to collect the end task and say goodbye."""
        deadline = time.monotonic() + grace
        with self._cv:
            while set(self.members.live()) - self._goodbyes and time.monotonic() < deadline:
                self._cv.wait(0.2)
