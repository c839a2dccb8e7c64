"""Who is in the job: registration with per-site tokens, last-seen times, expiry of silent clients.

Silence is judged on the host's own observed time: if the host itself was stopped (SIGSTOP, swapping, a
stuck filesystem) for longer than half of heartbeat_timeout, nobody could have reached it meanwhile, so
every live site gets that time back before anyone is declared dead.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable

from hpcflare.enums import NamedEnum
from hpcflare.errors import UnknownClientError


class MemberState(NamedEnum):
    """Where a site stands in the job. REGISTERED and ACTIVE are live; the rest are final."""

    REGISTERED = "registered"
    ACTIVE = "active"  # has taken a task
    DONE = "done"  # said goodbye after finishing
    FAILED = "failed"  # said goodbye with an error
    DEAD = "dead"  # silent for longer than settings.heartbeat_timeout
    EXCLUDED = "excluded"  # never registered within settings.registration_timeout


LIVE = (MemberState.REGISTERED, MemberState.ACTIVE)
ENDED = (MemberState.DONE, MemberState.FAILED, MemberState.DEAD)


@dataclasses.dataclass
class ClientRecord:
    site: str
    token: str
    state: MemberState = MemberState.REGISTERED
    last_seen: float = dataclasses.field(default_factory=time.monotonic)
    reason: str = ""
    host: str = ""
    pid: int = 0
    via: str = ""
    """The relay or client rank this site speaks through ('' when it reaches the host itself)."""
    last_gap: float = 0.0
    """The longest silence that ended with one of its messages since its host read it (seconds): a host back
    from a stall may first send a result, then its heartbeat."""


class Membership:
    def __init__(
        self, expected: list[str], heartbeat_timeout: float, on_stall: Callable[[float], None] | None = None
    ) -> None:
        self.expected = list(expected)
        self.heartbeat_timeout = heartbeat_timeout
        self.stall_after = heartbeat_timeout / 2
        """A gap in the host's own clock ticks longer than this is the host's stall, not its children's."""
        self.on_stall = on_stall
        self._clients: dict[str, ClientRecord] = {}
        self._lock = threading.Lock()
        self._last_tick = time.monotonic()

    TICK_S = 0.25
    """Seconds between the watcher's clock ticks."""

    def watch(self, alive: Callable[[], bool], name: str = "stall-watch") -> None:
        """A daemon thread that ticks the host's clock while ``alive()``, so a stall is noticed even when
        no expiry check runs."""

        def run() -> None:
            while alive():
                time.sleep(self.TICK_S)
                self.tick()

        threading.Thread(target=run, name=name, daemon=True).start()

    def tick(self) -> None:
        """Called often by the host (a watcher thread, and every expiry check): notices its own stalls."""
        with self._lock:
            gap = self._credit_stall(time.monotonic())
        if gap and self.on_stall is not None:
            self.on_stall(gap)

    def _credit_stall(self, now: float) -> float:
        gap, self._last_tick = now - self._last_tick, now
        if gap <= self.stall_after:
            return 0.0
        self._give_back(now, gap)
        return gap

    def _give_back(self, now: float, seconds: float) -> None:
        """Every live site's silence shortened by ``seconds`` the host could not hear (the caller holds the lock)."""
        for record in self._clients.values():
            if record.state in LIVE:
                record.last_seen = min(now, record.last_seen + seconds)

    def forgive(self, seconds: float) -> None:
        """Give every live site ``seconds`` back: its host could not hear it then (see on_saturated)."""
        with self._lock:
            self._give_back(time.monotonic(), seconds)

    def vouches(self, site: str, token: str) -> bool:
        """Is ``token`` the current token of live member ``site``?"""
        with self._lock:
            record = self._clients.get(site)
        return record is not None and record.state in LIVE and secrets.compare_digest(record.token, token)

    def register(
        self, site: str, host: str = "", pid: int = 0, token: str | None = None, previous_token: object = None
    ) -> tuple[ClientRecord, ClientRecord | None]:
        """Register (or re-register after a restart) a site; returns (new record, replaced record).

        A site that is alive (heard from within heartbeat_timeout) is only replaced by a caller that shows
        its current token (the same site reconnecting, e.g. after its relay died), never evicted by another."""
        if site not in self.expected:
            raise UnknownClientError(
                f"site {site!r} is not part of this job (expected one of {self.expected[:10]}"
                f"{'...' if len(self.expected) > 10 else ''})"
            )
        with self._lock:
            old = self._clients.get(site)
            if (
                old is not None
                and old.state in LIVE
                and old.token
                and time.monotonic() - old.last_seen <= self.heartbeat_timeout
                and not (
                    isinstance(previous_token, str) and secrets.compare_digest(old.token, previous_token)
                )
            ):
                raise UnknownClientError(
                    f"site {site!r} is registered and alive (heard from {time.monotonic() - old.last_seen:.0f}s ago); "
                    "another process cannot take its place. A restarted site can register again once the old one "
                    f"is silent for settings.heartbeat_timeout={self.heartbeat_timeout:g}s"
                )
            record = ClientRecord(site, token or secrets.token_hex(16), host=host, pid=pid)
            self._clients[site] = record
            return record, old

    def check(self, site: object, token: object) -> ClientRecord:
        """Authenticate a message and refresh the site's last-seen time."""
        record = self._clients.get(site) if isinstance(site, str) else None
        if (
            record is None
            or not record.token
            or not isinstance(token, str)
            or not secrets.compare_digest(record.token, token)
        ):
            raise UnknownClientError(
                f"message from unregistered site or stale token (site={site!r:.80}); register first"
            )
        now = time.monotonic()
        record.last_gap, record.last_seen = max(record.last_gap, now - record.last_seen), now
        return record

    def mark(self, site: str, state: MemberState, reason: str = "") -> None:
        with self._lock:
            record = self._clients.get(site)
            if record is not None and record.state in LIVE:
                record.state, record.reason = state, reason

    def touch(self, site: object) -> None:
        """Refresh a site's last-seen time on someone else's word (its relay's heartbeat)."""
        record = self._clients.get(site) if isinstance(site, str) else None
        if record is not None:
            record.last_seen = time.monotonic()

    def exclude(self, site: str, reason: str) -> None:
        """Record an expected site that will not take part (e.g. never registered), or, if it registered
        after the job had started without it, end its part."""
        with self._lock:
            record = self._clients.get(site)
            if record is None:
                self._clients[site] = ClientRecord(site, "", state=MemberState.EXCLUDED, reason=reason)
            elif record.state in LIVE:
                record.state, record.reason = MemberState.EXCLUDED, reason

    def expire(
        self, allowed: Callable[[ClientRecord], tuple[float, str]] | None = None
    ) -> list[ClientRecord]:
        """Declare live clients silent for longer than they are allowed dead; return the newly dead.
        ``allowed(record)``: (seconds, the setting that says so); default heartbeat_timeout."""
        self.tick()  # a stall the watcher has not seen yet is credited before anyone is judged
        now = time.monotonic()
        dead = []
        with self._lock:
            for record in self._clients.values():
                if record.state not in LIVE:
                    continue
                limit, name = (
                    allowed(record) if allowed else (self.heartbeat_timeout, "settings.heartbeat_timeout")
                )
                if now - record.last_seen > limit:
                    record.state = MemberState.DEAD
                    record.reason = f"no heartbeat for {now - record.last_seen:.0f}s ({name}={limit:g})"
                    dead.append(record)
        return dead

    def count(self) -> int:
        """Sites with a record (registered once, or excluded)."""
        return len(self._clients)

    def live(self) -> list[str]:
        with self._lock:  # registrations add records from other threads
            return [r.site for r in self._clients.values() if r.state in LIVE]

    def get(self, site: str) -> ClientRecord | None:
        return self._clients.get(site)

    def records(self) -> list[ClientRecord]:
        with self._lock:
            return list(self._clients.values())
