"""A site's link to its parent (the server, or a relay): rendezvous, registration, heartbeats, retries, failover.

Everything else a site does (fetching tasks and models, sending results) goes through :meth:`Connection.retry`
and :meth:`Connection.call`, so transient failures, a dead relay and a restarted server are handled once, here.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from hpcflare import errors
from hpcflare.job import JobConfig, JobDir
from hpcflare.monitoring.system import sampler
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.rendezvous import SERVER, FileRendezvous, choose_relay
from hpcflare.runtime.site.hooks import SiteHooks
from hpcflare.runtime.site.liveness import Liveness
from hpcflare.security.tls import StartupKit, explain_refusal, hint_for
from hpcflare.settings import Settings
from hpcflare.transport.api import ClientTransport, Rpc, ServerHandler
from hpcflare.transport.grpc_client import GrpcClientTransport, split_route
from hpcflare.transport.inproc import SCHEME as INPROC
from hpcflare.transport.inproc import InprocTransport, local_handler

T = TypeVar("T")


class Connection(Liveness):
    def __init__(
        self,
        job_dir: JobDir,
        config: JobConfig,
        settings: Settings,
        site: str,
        log: RankLogger,
        kit: StartupKit | None,
        hooks: SiteHooks,
        address: str | None = None,
        heartbeat_extra: Callable[[], dict[str, Any]] | None = None,
        parent: ServerHandler | None = None,
        in_process: bool = False,
    ) -> None:
        """``parent``: a host in this very process (a virtual client's client rank), reached without a network;
        ``in_process``: reach the parent in-process when it turns out to live in this process (SimEnv's server,
        for a client rank), else through gRPC."""
        self.job_dir, self.config, self.settings, self.site, self.log = job_dir, config, settings, site, log
        self.kit, self.hooks, self.parent, self.in_process = kit, hooks, parent, in_process
        self.rendezvous = FileRendezvous(job_dir.rendezvous_dir, settings.rendezvous_timeout)
        self.address = address
        self.token = ""
        self.transport: ClientTransport | None = None
        self.relay_name: str | None = None  # set while connected through a relay
        self.started = False
        self.heartbeat_extra = heartbeat_extra or self._own_sample
        """Extra fields for each heartbeat (relays add the children they heard from; a site its process's
        system sample, every settings.metrics_interval)."""
        self.on_reconnect: Callable[[], None] | None = None
        """Set by a host (relay, client rank): called after this link registered again with a restarted parent,
        to register its children again too."""
        self.on_stuck: Callable[[str, bool], None] | None = None
        """Set by a process launcher: called (reason, server_lost) when the job is over but the training
        script is still running, so a hung script cannot hold its allocation until the time limit."""
        self._stop = threading.Event()
        self._last_contact = time.monotonic()
        self._failover_lock = threading.RLock()
        self._told_lost: str | None = None  # the relay whose loss this site has logged
        self._discovered = False  # address came from the rendezvous file (so a restarted server can be found)

    def _own_sample(self) -> dict[str, Any]:
        sample = sampler().due(f"site:{self.site}", self.settings.metrics_interval)
        return {"samples": {self.site: {"role": "client", "sample": sample.to_wire()}}} if sample else {}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.parent is not None:
            self.address = f"{INPROC}{getattr(self.parent, 'name', 'host')}"
        site_relay = self.config.site_relay_of(self.site)
        if self.address is None and site_relay and self.config.rank_hosts():
            # a client rank of an institution's own: its site's relay, announced in the site's job folder
            self.relay_name = site_relay
            self.address = self.rendezvous.lookup(site_relay, self.settings.rendezvous_timeout).address
        if self.address is None:
            units = (
                list(self.config.rank_hosts()) or self.config.clients
            )  # who connects: client ranks, else sites
            if self.config.relays and self.site in units:
                relay = choose_relay(
                    self.rendezvous, self.config, units.index(self.site), self.settings.rendezvous_timeout
                )
                if relay is None:
                    self.log.warning(
                        "relay_missing",
                        f"no relay announced itself within settings.rendezvous_timeout="
                        f"{self.settings.rendezvous_timeout:g}s; connecting directly to the server",
                    )
                else:
                    self.relay_name, self.address = relay.name, relay.address
            if self.address is None:
                self.address = self._server_address(self.settings.rendezvous_timeout)
                self._discovered = True
        self._connect(self.address)
        self.started = True
        if self.parent is None:  # an in-process parent sees its sites' threads: it vouches for them itself
            threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.site}", daemon=True).start()

    def _server_address(self, timeout: float) -> str:
        return self.rendezvous.lookup(SERVER, timeout).address

    def _connect(self, address: str) -> None:
        s = self.settings
        peer_name = self.relay_name or (self.kit.server if self.kit else "server")
        local = local_handler(address) if self.in_process and self.parent is None else None
        transport: ClientTransport = (
            InprocTransport(self.parent, s, address)
            if self.parent is not None
            else InprocTransport(local, s, f"{INPROC}{peer_name}", published=address)
            if local is not None
            else GrpcClientTransport(address, s, self.kit, peer_name)
        )

        def register() -> dict:
            try:
                return transport.call(
                    Rpc.REGISTER,
                    {
                        "site": self.site,
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "node": os.environ.get("SLURMD_NODENAME", ""),
                        "proof": self.job_dir.registration_proof(self.site),
                        "previous_token": self.token,
                        **self.hooks.registration_fields(),
                    },
                    s.rpc_timeout,
                )
            except errors.PeerGoneError:
                self._check_handshake(address, peer_name)
                raise

        reply = self.retry(Rpc.REGISTER, register, failover=False)
        # token before transport: a thread that sees the new transport also sees its token (calls read
        # self.transport first, then self.token)
        self.token = reply["token"]
        self.hooks.on_registered(reply)
        self.address, self.transport = address, transport
        via = f" through {self.relay_name}" if self.relay_name else ""
        how = " (in-process)" if isinstance(transport, InprocTransport) and self.parent is None else ""
        self.log.info(
            "registered",
            f"{self.site} registered with server{via} at {address}{how}",
            address=address,
            relay=self.relay_name,
            transport="inproc" if isinstance(transport, InprocTransport) else "grpc",
        )
        if self.started and self.on_reconnect is not None:
            self.on_reconnect()

    def _check_handshake(self, address: str, peer_name: str) -> None:
        """An unreachable peer on a TLS job may be one that refuses our certificate: find out, fail clearly."""
        if self.kit is None or self.parent is not None:
            return
        target = split_route(address)[0]  # a job behind a standing server: its port does the handshake
        reason = explain_refusal(target, self.kit, peer_name, timeout=self.settings.rpc_timeout)
        if reason is None:
            return
        message = f"TLS handshake with {peer_name} at {address} failed: {reason}; {hint_for(reason)}"
        self.log.error("tls_refused", message, reason=reason, peer=peer_name)
        raise errors.CertificateError(message)

    def close(self, status: str = "done", reason: str = "") -> None:
        """Say goodbye (with how this site ended) and close the channel."""
        self._stop.set()
        if self.transport is not None and self.token:
            try:
                self.call(
                    Rpc.GOODBYE, {"status": status, "reason": reason}, self.settings.rpc_timeout, once=True
                )
            except errors.HpcflareError as exc:
                self.log.debug("goodbye_failed", f"could not say goodbye: {exc}")
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # ---------------------------------------------------------------- calls
    def retry(self, what: str, fn: Callable[[], T], failover: bool = True) -> T:
        """Retry transient failures (server not up yet / briefly gone) until settings.server_lost_timeout;
        a dead relay triggers a failover to the server first."""
        deadline = time.monotonic() + self.settings.server_lost_timeout
        attempt, registered_again = 0, False
        while True:
            transport = self.transport
            try:
                result = fn()
                self._last_contact = time.monotonic()
                return result
            except errors.UnknownClientError as exc:  # a restarted parent: once per call, then it is real
                if not failover or registered_again or not self._register_again(exc, transport):
                    raise
                registered_again = True
            except (errors.PeerGoneError, errors.StreamTimeoutError) as exc:
                if (
                    failover
                    and isinstance(exc, errors.PeerGoneError)
                    and (self._failover(exc, transport) or self._rediscover(exc, transport))
                ):
                    deadline = time.monotonic() + self.settings.server_lost_timeout
                    continue
                if time.monotonic() >= deadline:
                    raise errors.PeerGoneError(
                        f"{what}: server unreachable for settings.server_lost_timeout="
                        f"{self.settings.server_lost_timeout:g}s: {exc}"
                    ) from None
                attempt += 1
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))

    def call(self, method: str, request: dict, timeout: float, once: bool = False) -> dict:
        """A unary call in this site's name, retried like every other transfer; ``once``: a single attempt
        (the caller may be closing after the job ended, when the server can already be gone)."""

        def attempt() -> dict:
            transport, token = self.credentials()
            return transport.call(method, {"site": self.site, "token": token, **request}, timeout)

        return attempt() if once else self.retry(method, attempt)

    def credentials(self) -> tuple[ClientTransport, str]:
        """The current transport and its token, read in that order (see _connect)."""
        transport = self.transport
        if transport is None:
            raise errors.PeerGoneError(f"{self.site} is not connected to the job")
        return transport, self.token
