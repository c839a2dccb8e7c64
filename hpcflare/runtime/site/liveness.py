"""A site's link staying alive: heartbeats (and what a silent server or the job's end means for a script
still running), failover to the server when the relay is gone, and finding a server that restarted elsewhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hpcflare import errors
from hpcflare.job import JobConfig
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.rendezvous import SERVER, FileRendezvous
from hpcflare.settings import Settings
from hpcflare.transport.api import ClientTransport, Rpc


class Liveness:
    """Mixed into :class:`~hpcflare.runtime.site.connection.Connection`: heartbeats, failover, rediscovery."""

    site: str
    token: str
    address: str | None
    config: JobConfig
    settings: Settings
    log: RankLogger
    rendezvous: FileRendezvous
    transport: ClientTransport | None
    relay_name: str | None
    heartbeat_extra: Callable[[], dict[str, Any]]
    on_stuck: Callable[[str, bool], None] | None
    _stop: threading.Event
    _last_contact: float
    _failover_lock: threading.RLock
    _told_lost: str | None
    _discovered: bool
    _connect: Callable[[str], None]
    _server_address: Callable[[float], str]

    # ---------------------------------------------------------------- failover
    def _relay_lost(self, message: str) -> None:
        """Say once (per relay) that this site's relay is gone and the site leaves; every retry after that is
        the same news."""
        if self._told_lost == self.relay_name:
            return
        self._told_lost = self.relay_name
        self.log.error("relay_lost", message, relay=self.relay_name)

    def _failover(self, exc: Exception, failed: ClientTransport | None) -> bool:
        """The relay is gone: reconnect straight to the server if the job's policy allows it.

        Called from the main thread and the heartbeat thread alike; True means "retry on self.transport".
        """
        with self._failover_lock:
            if failed is not self.transport:  # the other thread already switched
                return self.transport is not None
            site_relay = self.config.site_relay_of(self.site)
            if site_relay is not None and self.relay_name == site_relay:
                self._relay_lost(
                    f"{site_relay}'s relay lost ({exc}); this client rank reaches the server only through its "
                    f"site's relay: it leaves the job unless the relay answers within "
                    f"settings.server_lost_timeout={self.settings.server_lost_timeout:g}s (the relay's own log "
                    "says why it ended)"
                )
                return False
            if self.relay_name is None or self.config.relay_failover != "direct":
                if self.relay_name is not None:
                    self._relay_lost(
                        f"relay {self.relay_name} lost ({exc}); relay_failover='exclude': leaving the job"
                    )
                return False
            lost, self.relay_name = self.relay_name, None
            self.log.warning(
                "relay_lost", f"relay {lost} lost ({exc}); reconnecting directly to the server", relay=lost
            )
            self._discovered = True
            self._connect(self._server_address(self.settings.rendezvous_timeout))
            if failed is not None:
                failed.close()
            return True

    def _rediscover(self, exc: Exception, failed: ClientTransport | None) -> bool:
        """The server is unreachable: if it restarted elsewhere (new rendezvous file), reconnect there."""
        if not self._discovered:
            return False
        with self._failover_lock:
            if failed is not self.transport:
                return self.transport is not None
            endpoint = self.rendezvous.read(SERVER)
            if endpoint is None or endpoint.address == self.address:
                return False
            self.log.warning(
                "server_moved",
                f"server unreachable ({exc}); it restarted at {endpoint.address}: reconnecting",
                address=endpoint.address,
            )
            self._connect(endpoint.address)
            if failed is not None:
                failed.close()
            return True

    def _register_again(self, exc: Exception, failed: ClientTransport | None) -> bool:
        """The parent answered but knows no such token: it restarted (resumed from its checkpoint at the same
        address, no rendezvous to tell). Register again showing the token, which a parent without a record of
        this site keeps; True = retry on self.transport."""
        if isinstance(exc, errors.RegistrationRefusedError) or self.parent is not None:
            return False
        with self._failover_lock:
            if failed is not self.transport:
                return self.transport is not None
            self.log.warning(
                "parent_restarted",
                f"the server at {self.address} no longer knows this site ({exc}); it restarted: registering again",
            )
            self._connect(self.address)
            if failed is not None and failed is not self.transport:
                failed.close()
            return True

    def relay_gone(self, exc: Exception) -> bool:
        """After a broken transfer: is the relay itself gone? If so, fail over (True = retry the transfer)."""
        transport = self.transport
        if self.relay_name is None or transport is None:
            return False
        try:
            transport.call(Rpc.HEARTBEAT, {"site": self.site, "token": self.token}, self.settings.rpc_timeout)
            return False
        except errors.PeerGoneError as gone:
            return self._failover(gone, transport)
        except errors.HpcflareError:
            return False

    # ---------------------------------------------------------------- heartbeats
    def _stuck_after_end(self) -> None:
        """The server ended the job; give the script settings.end_grace to notice, then stop it."""
        if self.on_stuck is None or self._stop.wait(self.settings.end_grace):
            return
        self.on_stuck(
            f"the job ended but the training script was still running after settings.end_grace="
            f"{self.settings.end_grace:g}s",
            False,
        )

    def _heartbeat_loop(self) -> None:
        s = self.settings
        while not self._stop.wait(s.heartbeat_interval):
            transport = self.transport
            if transport is None:
                return
            try:
                reply = transport.call(
                    Rpc.HEARTBEAT,
                    {"site": self.site, "token": self.token, **self.heartbeat_extra()},
                    s.rpc_timeout,
                )
                self._last_contact = time.monotonic()
                if reply.get("phase") == "ended":
                    self._stuck_after_end()
                    return
            except errors.HpcflareError as exc:
                silent = time.monotonic() - self._last_contact
                self.log.warning(
                    "heartbeat_failed", f"heartbeat failed ({silent:.0f}s without server): {exc}"
                )
                if silent > s.server_lost_timeout and self.on_stuck is not None:
                    self.on_stuck(
                        f"server unreachable for {silent:.0f}s (settings.server_lost_timeout="
                        f"{s.server_lost_timeout:g}s) while the training script was busy",
                        True,
                    )
                    return
                try:
                    if isinstance(exc, errors.PeerGoneError):
                        self._failover(exc, transport) or self._rediscover(exc, transport)
                    elif isinstance(exc, errors.UnknownClientError):
                        self._register_again(exc, transport)
                except errors.HpcflareError as again:
                    self.log.warning("failover_failed", f"reconnecting failed: {again}")
