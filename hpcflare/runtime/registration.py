"""The server's side of registration: who may join (the job's proof, a token kept across a server restart),
and the startup grace that waits for every expected client, then starts with ``min_clients`` or fails naming
who is missing and why.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from hpcflare import errors
from hpcflare.job import JobConfig, JobDir
from hpcflare.rank_logger import RankLogger, plural
from hpcflare.runtime.cluster.beacon import BeaconWatch, start_failures
from hpcflare.runtime.cluster.rendezvous import incarnation
from hpcflare.runtime.host.membership import ENDED, Membership, MemberState
from hpcflare.runtime.host.round_host import HostPhase
from hpcflare.settings import Settings
from hpcflare.strategy.api import Strategy
from hpcflare.transport.api import Peer

TOKEN = re.compile(r"[0-9a-f]{32}")
"""What a site token looks like (secrets.token_hex(16))."""

REGISTRATION_SUMMARY_EVERY = 10.0
"""Seconds between 'N of M clients registered' lines while the server waits for its clients."""


class ServerRegistration:
    """Mixed into :class:`~hpcflare.runtime.server.FLServer` (a RoundHost): its Register handler and its wait."""

    config: JobConfig
    settings: Settings
    log: RankLogger
    members: Membership
    strategy: Strategy
    job_dir: JobDir
    relays: list[str]
    hosts: dict[str, set[str] | None]
    phase: HostPhase
    site_log: Callable[..., None]
    _cv: threading.Condition

    _add_member: Callable[[dict, str | None], tuple[Any, Any]]
    may_act_for: Callable[[str, str], bool]
    live_children: Callable[[], set[str]]
    _check_abort: Callable[[], None]

    def register(self, request: dict, peer: Peer | None = None) -> dict:
        site = request.get("site")
        try:
            if not isinstance(site, str) or site not in self.members.expected:
                raise errors.RegistrationRefusedError(
                    f"site {site!r:.80} is not one of this job's sites ({', '.join(self.members.expected[:10])}"
                    f"{', ...' if len(self.members.expected) > 10 else ''})"
                )
            if peer is None or peer.identity is None:  # a certificate that may act for the site proves it
                self.job_dir.check_proof(site, request.get("proof"))
        except errors.RegistrationRefusedError as exc:
            self.log.warning(
                "register_refused",
                f"refused the registration of {str(site)[:80]!r} from {peer or 'a caller'}: {exc}",
                site=str(site)[:80],
                peer=str(peer or ""),
            )
            raise
        # after a restart the server has no record of anyone: a site (or a relay for its child) that shows its
        # token keeps it, so sites behind a relay or client rank go on under the tokens they hold
        shown = request.get("previous_token")
        keep = (
            shown
            if isinstance(shown, str)
            and TOKEN.fullmatch(shown)
            and isinstance(site, str)
            and self.members.get(site) is None
            else None
        )
        record, old = self._add_member(request, keep)
        site = record.site
        reply = {
            "token": record.token,
            "job_id": self.config.job_id,
            "num_rounds": self.config.num_rounds,
            "framework": self.config.framework,
        }
        if old is not None and old.state == MemberState.EXCLUDED and self.phase != HostPhase.REGISTRATION:
            self.members.exclude(
                site,
                "it registered after the job had started without it "
                f"(settings.registration_timeout={self.settings.registration_timeout:g}s)",
            )
            self.log.warning(
                "late_registrant",
                f"{site} registered after the job started without it; it is told to end",
                site=site,
            )
            return reply
        if old is not None:
            self.log.warning(
                "client_reregistered",
                f"{site} registered again (was {old.state}); previous instance replaced",
                site=site,
            )
        node, via = str(request.get("node") or "")[:128], str(request.get("via") or "")[:64]
        if via and (peer is None or peer.identity in (None, via)) and self.may_act_for(via, site):
            # judged as the host it speaks through (RoundHost.silence_allowed)
            record.via = via
        kind = "relay" if site in self.relays else "client rank" if site in self.hosts else "client"
        event = {"relay": "relay_registered", "client rank": "client_rank_registered"}.get(
            kind, "client_registered"
        )
        (self.site_log if kind == "client" else self.log.info)(
            event,
            f"{site} registered from {record.host or '?'}{'/' + node if node else ''} pid {record.pid}"
            + (f" via {via}" if via else ""),
            site=site,
            host=record.host,
            node=node,
            pid=record.pid,
            via=via,
        )
        if self.members.count() >= len(self.members.expected):  # the registration wait polls until then
            with self._cv:
                self._cv.notify_all()
        extra = self.strategy.on_register(site, request) if kind == "client" else {}
        return {**extra, **reply}

    def _await_registration(self) -> None:
        """Startup grace: wait for every expected client until registration_timeout, then go on with
        min_clients (naming who is missing) or fail. A site whose client rank is alive but still starting (its
        start-up beacon keeps changing) is waited for up to startup_timeout."""
        cfg, timeout = self.config, self.settings.registration_timeout
        started = time.monotonic()
        deadline = started + timeout
        startup_deadline = started + max(timeout, self.settings.startup_timeout)
        beacons = BeaconWatch(self.job_dir.rendezvous_dir, self.settings.heartbeat_timeout)
        summary_at = time.monotonic() + REGISTRATION_SUMMARY_EVERY
        waited_for: set[str] = set()
        start_failed: dict[str, str] = {}
        with self._cv:
            while True:
                # sites that ended before registering left their cause: no need to wait for them
                start_failed = {
                    site: why
                    for site, why in start_failures(self.job_dir.rendezvous_dir, incarnation()).items()
                    if site in self.members.expected and self.members.get(site) is None
                }
                live, gone = self.live_children(), self._gone() | set(start_failed)
                registered = len(live)
                if registered + len(gone) >= len(cfg.clients):
                    break
                self._check_abort()
                starting = beacons.alive() - live - gone
                now = time.monotonic()
                if now >= deadline and (not starting or now >= startup_deadline):
                    break
                if now >= deadline and not starting <= waited_for:
                    waited_for |= starting
                    self.log.info(
                        "sites_starting",
                        f"{len(starting)} site(s) not registered after settings.registration_timeout={timeout:g}s "
                        "but their client ranks are alive and still starting: waiting up to "
                        f"settings.startup_timeout={self.settings.startup_timeout:g}s",
                        sites=sorted(starting)[:50],
                    )
                if time.monotonic() >= summary_at:
                    summary_at += REGISTRATION_SUMMARY_EVERY
                    self.log.info(
                        "registration_progress",
                        f"{registered} of {plural(len(cfg.clients), 'client')} registered",
                        registered=registered,
                        expected=len(cfg.clients),
                    )
                remaining = deadline - time.monotonic()
                self._cv.wait(min(0.5, remaining) if remaining > 0 else 0.5)  # past it: sites still starting
        registered = sorted(self.live_children())
        missing = sorted(set(cfg.clients) - set(registered))
        failed = {  # the first cause first: sites that failed at start, with their own words
            **{site: why[:300] for site, why in start_failed.items() if site in missing},
            **{
                site: self.members.get(site).reason[:200]  # type: ignore[union-attr]
                for site in missing
                if self.members.get(site) is not None
            },
        }
        never = [site for site in missing if site not in failed]
        detail = "; ".join(
            ([f"failed at start: {failed}"] if failed else [])
            + ([f"never registered: {never[:20]}"] if never else [])
        )
        grace = f"settings.registration_timeout={timeout:g}s" + (
            f", and settings.startup_timeout={self.settings.startup_timeout:g}s for {sorted(waited_for)[:20]} "
            "(alive, still starting)"
            if waited_for & set(never)
            else ""
        )
        if len(registered) < cfg.min_clients:
            # everyone is accounted for: the job cannot start, and waiting longer would not help
            if not never:
                first = list(failed.items())[:3]  # start failures first: the sites' own words
                more = len(failed) - len(first)
                raise errors.RegistrationTimeoutError(
                    "; ".join(f"{site} failed at start: {why}" for site, why in first)
                    + (f" (and {more} more: see the server log)" if more > 0 else "")
                    + f"; so only {len(registered)} of {len(cfg.clients)} clients can take part (min_clients="
                    f"{cfg.min_clients})"
                )
            raise errors.RegistrationTimeoutError(
                f"only {len(registered)} of {len(cfg.clients)} clients registered within {grace} (min_clients="
                f"{cfg.min_clients}); {detail}"
            )
        if missing:
            for site in never:
                self.members.exclude(site, f"did not register within {grace}")
            for site, why in start_failed.items():
                self.members.exclude(site, f"failed at start: {why}")
            self.log.warning(
                "clients_excluded",
                f"starting without {len(missing)} client(s) (startup grace {grace}): {detail}",
                missing=missing,
                never_registered=never,
                failed=failed,
            )
        self.log.info(
            "registration_done", f"{plural(len(registered), 'client')} registered", clients=registered
        )

    def _gone(self) -> set[str]:
        """Clients that registered and already ended (failed before their first task, or finished)."""
        return {r.site for r in self.members.records() if r.state in ENDED and r.site not in self.hosts}
