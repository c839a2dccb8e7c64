"""In-process transport: a site and its parent host in one process (virtual clients of a client rank).

Calls go straight to the parent's :class:`ServerHandler`, but through the same frames, codec and limits as
gRPC (:mod:`hpcflare.transport.streams`), so the host validates a virtual client's result exactly as it
validates a remote one, and errors arrive as the same typed hpcflare errors.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Iterator

from hpcflare import errors
from hpcflare.settings import Settings
from hpcflare.transport.api import ClientTransport, Peer, ServerHandler
from hpcflare.transport.codec import TensorSpec, pack_meta, unpack_meta
from hpcflare.transport.streams import DownloadAssembler, upload_frames

SCHEME = "inproc:"
"""Address prefix of an in-process parent, e.g. ``inproc:client-rank-3``."""


class InprocTransport(ClientTransport):
    def __init__(self, handler: ServerHandler, settings: Settings, address: str) -> None:
        """``address``: how logs and errors name the parent, ``inproc:<its name>``."""
        self.handler, self.settings, self.address = handler, settings, address
        self._closed = False

    def _peer(self, cancelled: threading.Event | None = None) -> Peer:
        if self._closed:
            raise errors.PeerGoneError(f"connection to {self.address} was closed")
        return Peer(self.address, None, cancelled.set if cancelled is not None else None)

    def call(self, method: str, request: dict, timeout: float) -> dict:
        # through msgpack both ways, as on the wire: the same type checks, and neither side keeps a reference
        # into the other's objects (a host's cached task reply is shared by hundreds of sites)
        reply = self.handler.handle_unary(method, unpack_meta(pack_meta(request)), self._peer())
        return unpack_meta(pack_meta(reply))

    def download(self, request: dict, manifest: list[TensorSpec]) -> Iterator[tuple[TensorSpec, bytearray]]:
        stream = DownloadAssembler(manifest, self.settings)
        for frame in self.handler.handle_download({**request, "start": stream.position}, self._peer()):
            finished = stream.feed(frame)
            if finished is not None:
                yield finished
        if not stream.done:
            raise errors.MalformedMessageError(f"download from {self.address} ended early at tensor {stream.index}")

    def upload(self, header: dict, tensors: Iterable[tuple[str, Any]]) -> dict:
        cancelled = threading.Event()  # the host cancels the upload of a site it declared dead

        def frames() -> Iterator[bytes]:
            for frame in upload_frames(header, tensors, self.settings):
                if cancelled.is_set():
                    raise errors.StreamTimeoutError(f"upload to {self.address} cancelled by the host")
                yield frame

        return self.handler.handle_upload(frames(), self._peer(cancelled))

    def close(self) -> None:
        self._closed = True
