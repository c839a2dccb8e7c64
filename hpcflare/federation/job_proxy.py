"""Jobs behind the standing server's one port (server.yaml ``job_routing: proxy``, the default).

A site's ranks call the job service (``hpcflare.v1.FL``: Register, Heartbeat, Download, Upload, ...) on the
standing server's port, naming the job in their call metadata (``hpcflare-job``; a site is given the address
``HOST:PORT/JOB_ID``). The standing server checks the caller's certificate (a client of the project), and passes
the call on, bytes as they are, to that job's server rank over mutual TLS under its own certificate, adding who
the caller is (``hpcflare-peer``: its certificate name, ``hpcflare-peer-address``). The job's server rank takes
those two only from a caller that holds the server's own certificate (``GrpcServer``), and judges the site as if
it had connected itself. So an institution opens one port for everything; the job's server ranks listen where
only the standing server reaches them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from hpcflare.federation.api import FederationHost
from hpcflare.federation.store import FedJobState
from hpcflare.security.tls import peer_identity
from hpcflare.transport.grpc_server import JOB_KEY, PEER_ADDRESS_KEY, PEER_KEY, SERVICE

STREAMED_DOWN, STREAMED_UP = "Download", "Upload"
"""The job service's streaming methods (every other one is unary)."""
HOP_KEYS = (JOB_KEY, PEER_KEY, PEER_ADDRESS_KEY)
"""Metadata the proxy sets itself: never passed on from a caller."""


def _target(address: str) -> str:
    """Where the proxy dials a job's server rank: ':PORT' is a rank beside the standing server."""
    return "127.0.0.1" + address if address.startswith(":") else address


def _left(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline, passed on (None: it set none; the rank's own watchdogs still apply)."""
    left = context.time_remaining()
    return None if left is None or left > 1e8 else max(0.001, float(left))


class JobProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, server: FederationHost, threads: int = 64) -> None:
        """``threads``: the standing server's workers; one site's calls in flight may hold half of them at most,
        so a site that floods its job cannot starve the other sites (or the agents and admins)."""
        self.server = server
        self.per_site = max(4, threads // 2)
        self._in_flight: dict[str, int] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ routing
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if not method.startswith(f"/{SERVICE}/"):
            return None
        name = method.rsplit("/", 1)[1]
        if name == STREAMED_DOWN:
            return grpc.unary_stream_rpc_method_handler(self._down(method))
        if name == STREAMED_UP:
            return grpc.stream_unary_rpc_method_handler(self._up(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _route(self, context: grpc.ServicerContext) -> tuple[grpc.Channel, list[tuple[str, str]], str]:
        """The job's server rank, the metadata to send it and the caller's certificate name; aborts the call
        with why it cannot go on."""
        identity = peer_identity(context)
        if identity is None or self.server.kit.participants.get(identity) != "client":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate {identity!r} is not a site of project {self.server.kit.project!r}",
            )
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]
        job_id = dict(metadata).get(JOB_KEY, "")
        job = self.server.store.jobs.get(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id[:80]!r} on this standing server")
        assert job is not None
        if job.state != FedJobState.RUNNING or not job.address:
            # UNAVAILABLE: a rank still starting (or restarting) is retried by the site as a gone peer
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"job {job_id}'s server rank is not serving ({job.state})"
            )
        passed = [(k, v) for k, v in metadata if k not in HOP_KEYS and not k.startswith((":", "grpc-"))]
        passed += [(PEER_KEY, identity or ""), (PEER_ADDRESS_KEY, str(context.peer()))]
        return self._channel(job.address), passed, identity or ""

    @contextlib.contextmanager
    def _held(self, context: grpc.ServicerContext, who: str) -> Iterator[None]:
        """Count a call in flight for the caller's certificate ``who``; refuse one beyond its share as busy (the
        site retries it with back-off, as any busy server's refusal)."""
        with self._lock:
            held = self._in_flight.get(who, 0)
            if held < self.per_site:
                self._in_flight[who] = held + 1
        if held >= self.per_site:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"busy: {who} has {held} calls in flight through the standing server (half its threads); retry",
            )
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[who] -= 1
                if not self._in_flight[who]:
                    del self._in_flight[who]

    def _channel(self, address: str) -> grpc.Channel:
        address = _target(address)
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                kit, limit = self.server.kit, self.server.settings.max_frame_bytes
                options = [
                    ("grpc.max_send_message_length", limit),
                    ("grpc.max_receive_message_length", limit),
                    *kit.channel_options(kit.name),
                ]
                channel = grpc.secure_channel(address, kit.channel_credentials(), options=options)
                self._channels[address] = channel
            return channel

    def forget(self, address: str) -> None:
        """A job ended: close its channel."""
        with self._lock:
            channel = self._channels.pop(_target(address), None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    # ------------------------------------------------------------------ the three shapes of call
    @staticmethod
    def _relay_error(context: grpc.ServicerContext, exc: grpc.RpcError) -> None:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
        details = exc.details() if hasattr(exc, "details") else str(exc)
        context.abort(code, details or str(code))

    def _unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            channel, metadata, who = self._route(context)
            with self._held(context, who):
                try:
                    reply: bytes = channel.unary_unary(method)(
                        request, timeout=_left(context), metadata=metadata
                    )
                    return reply
                except grpc.RpcError as exc:
                    self._relay_error(context, exc)
                    raise  # unreachable: abort raises

        return handle

    def _down(self, method: str) -> Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]:
        def handle(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            channel, metadata, who = self._route(context)
            with self._held(context, who):
                call: Any = channel.unary_stream(method)(request, timeout=_left(context), metadata=metadata)
                context.add_callback(call.cancel)  # the site went away: so does the rank's stream
                try:
                    yield from call
                except grpc.RpcError as exc:
                    self._relay_error(context, exc)

        return handle

    def _up(self, method: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], bytes]:
        def handle(frames: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            channel, metadata, who = self._route(context)
            with self._held(context, who):
                future: Any = channel.stream_unary(method).future(
                    frames, timeout=_left(context), metadata=metadata
                )
                context.add_callback(future.cancel)
                try:
                    reply: bytes = future.result()
                    return reply
                except grpc.RpcError as exc:
                    self._relay_error(context, exc)
                    raise

        return handle
