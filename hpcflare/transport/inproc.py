"""In-process transport: a site and its parent host in one process (virtual clients of a client rank).

Calls go straight to the parent's :class:`ServerHandler` and errors arrive as the same typed hpcflare errors.
Unary calls go through msgpack both ways. Models and results skip the frames when the parent is a
:class:`LocalHandler` (a client rank's host): a site maps the host's one copy of the model copy-on-write, and
hands its result's arrays over for the same checks a streamed upload gets (names, shapes, dtypes, sizes,
finiteness) -- at 100 MB a site, copying them through frames was most of a virtual client's round. Any other
handler gets the frames of :mod:`hpcflare.transport.streams`, with gRPC's limits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from hpcflare import errors
from hpcflare.settings import Settings
from hpcflare.transport.api import ClientTransport, LocalHandler, Peer, Rpc, ServerHandler, UploadHeader
from hpcflare.transport.codec import TensorSpec, pack_meta, unpack_map
from hpcflare.transport.streams import DownloadAssembler, check_model_size, upload_frames

SCHEME = "inproc:"
"""Address prefix of an in-process parent, e.g. ``inproc:client-rank-3``."""

_LOCAL_HOSTS: dict[str, LocalHandler] = {}
_LOCAL_LOCK = threading.Lock()


def publish_local(address: str, handler: LocalHandler) -> None:
    """Say that the host listening at ``address`` lives in this process (SimEnv's server), so a client rank of
    the same process may reach it in-process instead of through loopback gRPC."""
    with _LOCAL_LOCK:
        _LOCAL_HOSTS[address] = handler


def withdraw_local(address: str) -> None:
    with _LOCAL_LOCK:
        _LOCAL_HOSTS.pop(address, None)


def local_handler(address: str) -> LocalHandler | None:
    """The host at ``address`` if it lives in this process and still listens."""
    with _LOCAL_LOCK:
        return _LOCAL_HOSTS.get(address)


class InprocTransport(ClientTransport):
    def __init__(
        self, handler: ServerHandler, settings: Settings, address: str, published: str | None = None
    ) -> None:
        """``address``: how logs and errors name the parent, ``inproc:<its name>``; ``published``: the address
        under which the parent was found with :func:`local_handler` (the link is gone once it withdraws)."""
        self.handler, self.settings, self.address, self.published = handler, settings, address, published
        self._closed = False

    def _peer(self, cancelled: threading.Event | None = None) -> Peer:
        if self._closed:
            raise errors.PeerGoneError(f"connection to {self.address} was closed")
        if self.published is not None and local_handler(self.published) is not self.handler:
            raise errors.PeerGoneError(f"{self.address} stopped listening")
        return Peer(self.address, None, cancelled.set if cancelled is not None else None)

    def call(self, method: Rpc, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        # through msgpack both ways, as on the wire: the same type checks, and neither side keeps a reference
        # into the other's objects (a host's cached task reply is shared by hundreds of sites)
        reply = self.handler.handle_unary(Rpc(method), unpack_map(pack_meta(request)), self._peer())
        return unpack_map(pack_meta(reply))

    def download(
        self, request: dict[str, Any], manifest: list[TensorSpec]
    ) -> Iterator[tuple[TensorSpec, Any]]:
        if isinstance(self.handler, LocalHandler):
            check_model_size(manifest, self.settings)
            shared = self.handler.handle_local_download(dict(request), self._peer())
            if [spec for spec, _ in shared] != manifest:
                raise errors.StaleTaskError(
                    f"the model at {self.address} no longer matches the task's manifest"
                )
            yield from shared
            return
        stream = DownloadAssembler(manifest, self.settings)
        for frame in self.handler.handle_download({**request, "start": stream.position}, self._peer()):
            finished = stream.feed(frame)
            if finished is not None:
                yield finished
        if not stream.done:
            raise errors.MalformedMessageError(
                f"download from {self.address} ended early at tensor {stream.index}"
            )

    def upload(self, header: UploadHeader, tensors: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        if isinstance(self.handler, LocalHandler):
            return unpack_map(
                pack_meta(self.handler.handle_local_upload(header.copy(), tensors, self._peer()))
            )
        cancelled = threading.Event()  # the host cancels the upload of a site it declared dead

        def frames() -> Iterator[bytes]:
            for frame in upload_frames(header, tensors, self.settings):
                if cancelled.is_set():
                    raise errors.StreamTimeoutError(f"upload to {self.address} cancelled by the host")
                yield frame

        return self.handler.handle_upload(frames(), self._peer(cancelled))

    def close(self) -> None:
        self._closed = True
