"""Both ends of a federation call: a mutual-TLS channel from a startup kit to the standing server, and the
server's generic handler that turns frames into typed calls and typed errors into gRPC status codes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from hpcflare import errors
from hpcflare.federation import wire
from hpcflare.security.tls import StartupKit, explain_refusal, hint_for, peer_identity

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class FederationChannel:
    """An admin's or a site agent's connection to a standing server, identified by its startup kit."""

    def __init__(self, kit: StartupKit, server: str, service: str) -> None:
        if ":" not in server:
            raise errors.ConfigError(f"server address must be HOST:PORT, got {server!r}")
        self.kit, self.server, self.service = kit, server, service
        for problem in kit.self_check():
            raise errors.CertificateError(f"{problem}; the standing server will refuse this kit")
        self._channel = grpc.secure_channel(
            server, kit.channel_credentials(), options=[*GRPC_OPTIONS, *kit.channel_options(kit.server)]
        )

    def close(self) -> None:
        self._channel.close()

    def _fail(self, exc: grpc.RpcError, rpc: str) -> errors.HpcflareError:
        error = wire.error_from(exc, f"{self.service.rsplit('.', 1)[-1]}.{rpc}", self.server)
        if isinstance(error, errors.PeerGoneError | errors.CertificateError):
            reason = explain_refusal(self.server, self.kit, self.kit.server)
            if reason is not None:
                return errors.CertificateError(
                    f"the standing server at {self.server} refused this kit ({self.kit.path}): {reason}; "
                    f"{hint_for(reason)}"
                )
            if isinstance(error, errors.CertificateError):
                return errors.PeerGoneError(str(error))
        return error

    def call(self, rpc: str, header: dict[str, Any], timeout: float) -> dict[str, Any]:
        method = self._channel.unary_unary(wire.method_path(self.service, rpc))
        try:
            reply, _ = wire.unpack(method(wire.pack(header), timeout=timeout))
        except grpc.RpcError as exc:
            raise self._fail(exc, rpc) from None
        return reply

    def send(self, rpc: str, frames: Iterator[bytes], timeout: float) -> dict[str, Any]:
        method = self._channel.stream_unary(wire.method_path(self.service, rpc))
        try:
            reply, _ = wire.unpack(method(frames, timeout=timeout))
        except grpc.RpcError as exc:
            raise self._fail(exc, rpc) from None
        return reply

    def fetch(self, rpc: str, header: dict[str, Any], timeout: float) -> Iterator[bytes]:
        method = self._channel.unary_stream(wire.method_path(self.service, rpc))
        stream = method(wire.pack(header), timeout=timeout)

        def frames() -> Iterator[bytes]:
            try:
                yield from stream
            except grpc.RpcError as exc:
                raise self._fail(exc, rpc) from None

        return frames()


Handler = Callable[..., Any]


def service_handler(
    service: str, methods: dict[str, Handler], on_error: Callable[[str, str | None, BaseException], None]
) -> grpc.GenericRpcHandler:
    """A generic handler for ``service``: each method gets (identity, header, data | frames) and returns a reply
    header (or, for STREAMED_OUT calls, an iterator of frames). hpcflare errors become status codes; anything else
    is logged through ``on_error`` and reported as INTERNAL."""

    def wrap(rpc: str, fn: Handler) -> grpc.RpcMethodHandler:
        def fail(context: grpc.ServicerContext, identity: str | None, exc: Exception) -> None:
            code = wire.status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                on_error(rpc, identity, exc)
            context.abort(code, f"{type(exc).__name__}: {exc}"[:4000])

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            identity = peer_identity(context)
            try:
                if rpc in wire.STREAMED_IN:
                    return wire.pack(fn(identity, request))
                header, data = wire.unpack(request)
                return wire.pack(fn(identity, header, data))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status the caller can read
                fail(context, identity, exc)

        def streamed(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            identity = peer_identity(context)
            try:
                header, data = wire.unpack(request)
                yield from fn(identity, header, data)
            except Exception as exc:  # noqa: BLE001
                fail(context, identity, exc)

        if rpc in wire.STREAMED_IN:
            return grpc.stream_unary_rpc_method_handler(guarded)
        if rpc in wire.STREAMED_OUT:
            return grpc.unary_stream_rpc_method_handler(streamed)
        return grpc.unary_unary_rpc_method_handler(guarded)

    return grpc.method_handlers_generic_handler(service, {rpc: wrap(rpc, fn) for rpc, fn in methods.items()})


def backoff(attempt: int, cap: float) -> float:
    """Seconds before retry ``attempt`` (1, 2, 4, ... up to ``cap``)."""
    return float(min(cap, 2 ** min(attempt, 16)))
