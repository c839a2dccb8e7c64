"""gRPC client side: unary calls on a control channel, pull-based chunked streams on a data channel.

Heartbeats and task polls use their own channel so a large transfer never blocks them.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import ItemsView, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from hpcflare import errors
from hpcflare.settings import Settings
from hpcflare.transport import shm
from hpcflare.transport.api import ClientTransport, Rpc, UploadHeader
from hpcflare.transport.codec import (
    TensorSpec,
    decode_tensor,
    pack_meta,
    tensor_parts,
    unpack_map,
)
from hpcflare.transport.grpc_server import JOB_KEY, SERVICE, SITE_KEY, TOKEN_KEY
from hpcflare.transport.shm import SharedModel
from hpcflare.transport.streams import DownloadAssembler, upload_frames

if TYPE_CHECKING:
    from hpcflare.security.tls import StartupKit

RETRYABLE = (errors.PeerGoneError, errors.StreamTimeoutError)


def credentials(site: str, token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata naming the sender before any frame: the host counts its stream as a member's, never as
    an anonymous one (see GrpcServer)."""
    return ((SITE_KEY, site), (TOKEN_KEY, token))


def split_route(address: str) -> tuple[str, str]:
    """``HOST:PORT/JOB_ID`` (a job behind a standing server's one port, see federation.job_proxy) -> the
    target and the job; a plain ``HOST:PORT`` -> itself and ''."""
    target, _, job = address.partition("/")
    return target, job


def translate(exc: grpc.RpcError, what: str, address: str) -> errors.HpcflareError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    msg = f"{what}: {detail}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.PeerGoneError(
            f"{what}: server at {address} is unreachable ({detail}); is the server rank alive?"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.StreamTimeoutError(
            f"{what}: deadline exceeded ({detail}); raise settings.rpc_timeout/stream_timeout if the link is slow"
        )
    if code == grpc.StatusCode.CANCELLED:
        return errors.StreamTimeoutError(
            f"{what}: cancelled by the other side ({detail}); it cuts streams that make "
            "no progress for settings.stream_idle_timeout"
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "FrameTooLarge" in (detail or "") or "larger than max" in (detail or ""):
            return errors.FrameTooLargeError(f"{msg}; a frame exceeded max_frame_bytes")
        # refused before any handler ran (gRPC's concurrent-call limit): nothing reached the server, retry
        return errors.ServerBusyError(
            f"{what}: server at {address} is at its concurrent-call limit ({detail}); "
            "retrying with backoff (raise settings.server_threads for many clients)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        if "certificate" in (detail or ""):
            hint = (
                ""
                if "startup kit" in detail
                else "; use this site's own startup kit from the project's provisioning"
            )
            return errors.CertificateError(msg + hint)
        if "RegistrationRefusedError" in (detail or ""):
            return errors.RegistrationRefusedError(msg)
        return errors.UnknownClientError(msg)
    if code == grpc.StatusCode.FAILED_PRECONDITION and "StaleTaskError" in (detail or ""):
        return errors.StaleTaskError(msg)
    if code == grpc.StatusCode.FAILED_PRECONDITION and "SharedMemoryError" in (detail or ""):
        return shm.SharedMemoryError(msg)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.UpdateRejectedError(msg) if what == Rpc.UPLOAD else errors.MalformedMessageError(msg)
    if code == grpc.StatusCode.ABORTED:
        return errors.JobAbortedError(msg)
    return errors.TransportError(f"{msg} (grpc status {code})")


def _size_of(tensors: Iterable[tuple[str, Any]]) -> int:
    """Bytes of an upload whose tensors can be looked at before streaming (a list or a dict's items); 0 for a
    one-shot iterator (its deadline is then settings.stream_timeout)."""
    if not isinstance(tensors, (list, tuple, ItemsView)):
        return 0
    return sum(int(getattr(value, "nbytes", 0) or 0) for _, value in tensors)


class _Progress:
    """Client-side idle watchdog for one stream: cancels the call after stream_idle_timeout without progress."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.last = time.monotonic()
        self.stalled = False
        self._done = threading.Event()
        self.call: Any = None

    def touch(self) -> None:
        self.last = time.monotonic()

    def __enter__(self) -> _Progress:
        threading.Thread(target=self._run, daemon=True, name="stream-progress").start()
        return self

    def _run(self) -> None:
        while not self._done.wait(min(1.0, self.idle_timeout / 4)):
            if time.monotonic() - self.last > self.idle_timeout and self.call is not None:
                self.stalled = True
                self.call.cancel()
                return

    def __exit__(self, *exc: object) -> None:
        self._done.set()


class GrpcClientTransport(ClientTransport):
    """Talks to a server or relay; with a startup kit over mutual TLS, verifying the peer's name ``peer_name``."""

    def __init__(
        self, address: str, settings: Settings, kit: StartupKit | None = None, peer_name: str = "server"
    ) -> None:
        self.address, self.settings, self.kit, self.peer_name = address, settings, kit, peer_name
        options = [
            ("grpc.max_receive_message_length", settings.max_frame_bytes),
            ("grpc.max_send_message_length", settings.max_frame_bytes),
            ("grpc.enable_retries", 0),
        ]
        options.append(("grpc.use_local_subchannel_pool", 1))
        target, job = split_route(address)
        self._route: tuple[tuple[str, str], ...] = ((JOB_KEY, job),) if job else ()
        """Metadata of every call: the job, when the job's server is reached through a standing server."""
        if kit is None:
            self._control = grpc.insecure_channel(target, options=options)
            self._data = grpc.insecure_channel(target, options=options)
        else:
            options += kit.channel_options(peer_name)
            self._control = grpc.secure_channel(target, kit.channel_credentials(), options=options)
            self._data = grpc.secure_channel(target, kit.channel_credentials(), options=options)
        self._unary: dict[str, Any] = {}
        self._download = self._data.unary_stream(f"/{SERVICE}/Download")
        self._upload = self._data.stream_unary(f"/{SERVICE}/Upload")
        self._parent_host: str | None = None
        """The parent's host key once a MapModel reply said it; uploads go as memory files when it is ours."""
        self._unshared_ref: str | None = None
        """The last model the parent said it cannot hand over as a memory file."""
        self.shm_off = "" if settings.shared_memory else "settings.shared_memory is false"
        """Why this link no longer tries shared memory ('' while it does)."""
        self.last_via = "grpc"
        """How the last download or upload travelled: 'grpc' or 'shared memory' (for the callers' logs)."""

    def call(self, method: Rpc, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        stub = self._unary.get(method)
        if stub is None:
            stub = self._unary[method] = self._control.unary_unary(f"/{SERVICE}/{method}")
        try:
            return unpack_map(stub(pack_meta(request), timeout=timeout, metadata=self._route or None))
        except grpc.RpcError as exc:
            raise translate(exc, method, self.address) from None
        except ValueError as exc:  # "Channel closed": another thread replaced this connection
            raise errors.PeerGoneError(f"{method}: connection to {self.address} was closed ({exc})") from None

    def shared_model(self, request: dict[str, Any], manifest: list[TensorSpec]) -> SharedModel | None:
        """The parent's memory file holding the model, when the parent is on this host (see transport.shm)."""
        if self.shm_off or (self._unshared_ref is not None and self._unshared_ref == request.get("ref")):
            return None
        try:
            reply = self.call(Rpc.MAP_MODEL, {**request, "host": shm.host_key()}, self.settings.rpc_timeout)
        except errors.MalformedMessageError as exc:  # a parent that does not know the method
            self.shm_off = str(exc)
            return None
        except (
            errors.TransportError
        ):  # the parent is gone for now: the stream's own retries and resume take over
            return None
        self._parent_host = reply.get("host") if isinstance(reply.get("host"), str) else ""
        if not shm.same_host(self._parent_host):
            self.shm_off = "the parent is on another host"
            return None
        if reply.get("shared") is None:  # this model is not in a memory file there (a relay's stream cache)
            self._unshared_ref = request.get("ref")  # download() need not ask again
            return None
        try:
            return SharedModel.attach(reply["shared"], manifest, self.settings.max_model_bytes)
        except shm.SharedMemoryError as exc:
            self.shm_off = str(exc)
            return None

    def download(
        self, request: dict[str, Any], manifest: list[TensorSpec]
    ) -> Iterator[tuple[TensorSpec, Any]]:
        """Map the model from a same-host parent (private copy-on-write views), else pull every tensor; on a
        transient failure resume at (tensor, offset) with backoff."""
        shared = self.shared_model(request, manifest)
        if shared is not None:
            self.last_via = "shared memory"
            try:
                yield from shared.open()
            finally:
                shared.close()
            return
        self.last_via = "grpc"
        stream = DownloadAssembler(manifest, self.settings)
        give_up = time.monotonic() + self.settings.server_lost_timeout
        attempt = 0
        while not stream.done:
            try:
                with _Progress(self.settings.stream_idle_timeout) as progress:
                    left = sum(s.nbytes for s in manifest[stream.index :]) - stream.filled
                    call = progress.call = self._download(
                        pack_meta({**request, "start": stream.position}),
                        timeout=self.settings.stream_deadline(left),
                        metadata=self._route or None,
                    )
                    for frame in call:
                        progress.touch()
                        finished = stream.feed(frame)
                        if finished is not None:
                            yield finished
                            attempt = 0
                    if not stream.done:
                        raise errors.PeerGoneError(
                            f"download stream ended early at tensor {stream.index} offset {stream.filled}"
                        )
            except (grpc.RpcError, ValueError) as exc:
                if isinstance(exc, ValueError):  # the channel was closed under us (reconnect in progress)
                    raise errors.PeerGoneError(
                        f"Download: connection to {self.address} was closed ({exc})"
                    ) from None
                err = translate(exc, Rpc.DOWNLOAD, self.address)
                if progress.stalled:
                    err = errors.StreamTimeoutError(
                        f"Download: no progress for settings.stream_idle_timeout={self.settings.stream_idle_timeout}s"
                    )
                if not isinstance(err, RETRYABLE) or time.monotonic() > give_up:
                    raise err from None
                attempt += 1
                time.sleep(min(5.0, 0.1 * 2**attempt) * (0.5 + random.random()))

    def upload(self, header: UploadHeader, tensors: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        """Stream the tensors; to a parent on this host, hand them over as a sealed memory file instead (one copy
        here, none there), streaming from that file if the parent cannot open it."""
        if self.shm_off or not shm.same_host(self._parent_host) or header.staged is not None:
            self.last_via = "grpc"
            return self._stream_upload(header, tensors)
        shared = SharedModel(tensor_parts(name, value) for name, value in tensors)
        try:
            description = shared.describe()
            listing = [spec.to_wire() for spec in shared.specs]
            if description is None:
                self.shm_off = "memory files cannot be sealed here"
            elif (
                len(pack_meta(listing)) < self.settings.max_frame_bytes // 2
            ):  # the list rides in the header frame
                try:
                    mapped = dataclasses.replace(header, mapped={"file": description, "tensors": listing})
                    reply = self._stream_upload(mapped, [])
                    self.last_via = "shared memory"
                    return reply
                except shm.SharedMemoryError as exc:
                    self.shm_off = str(exc)
            self.last_via = "grpc"
            return self._stream_upload(
                header, [(spec.name, decode_tensor(blob, spec)) for spec, blob in shared.blobs()]
            )
        finally:
            shared.close()

    def _stream_upload(self, header: UploadHeader, tensors: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        progress = _Progress(self.settings.stream_idle_timeout)
        local_error: list[BaseException] = []

        def frames() -> Iterator[bytes]:
            try:
                yield from upload_frames(header, tensors, self.settings, progress.touch)
            except Exception as exc:  # gRPC would swallow it into "Exception iterating requests"
                local_error.append(exc)
                raise

        with progress:
            try:
                future = progress.call = self._upload.future(
                    frames(),
                    timeout=self.settings.stream_deadline(_size_of(tensors)),
                    metadata=credentials(header.site, header.token) + self._route,
                )
                return unpack_map(future.result())
            except ValueError as exc:
                raise errors.PeerGoneError(
                    f"Upload: connection to {self.address} was closed ({exc})"
                ) from None
            except grpc.FutureCancelledError:  # our own idle watchdog cancelled the call
                raise errors.StreamTimeoutError(
                    f"Upload: no progress for settings.stream_idle_timeout="
                    f"{self.settings.stream_idle_timeout}s; cancelled"
                ) from None
            except grpc.RpcError as exc:
                if local_error:
                    raise local_error[0] from None
                if progress.stalled:
                    raise errors.StreamTimeoutError(
                        f"Upload: no progress for settings.stream_idle_timeout={self.settings.stream_idle_timeout}s"
                    ) from None
                raise translate(exc, Rpc.UPLOAD, self.address) from None

    def close(self) -> None:
        self._control.close()
        self._data.close()
