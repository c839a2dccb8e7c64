"""A host's model serving: downloads to children, memory files to children on its host, models in process.

Every child pulls the round's model from one encoded copy (no lock, no copy per child); a child on the same
host maps the host's memory file instead; a virtual client gets a private copy-on-write mapping. Each way
checks the caller and the model's ref first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.monitor import HostMonitor
from hpcflare.runtime.host.round import Round
from hpcflare.settings import Settings
from hpcflare.transport import shm
from hpcflare.transport.api import Peer
from hpcflare.transport.codec import TensorSpec


class ModelServing:
    """Mixed into :class:`~hpcflare.runtime.host.round_host.RoundHost`: what it serves of the round's model."""

    settings: Settings
    log: RankLogger
    members: Membership
    round: Round | None

    authorize: Callable[[Peer, Any], None]
    bytes_sent: int
    monitor: HostMonitor
    _download_slots: threading.BoundedSemaphore

    def _requested_model(self, request: dict[str, Any]) -> GlobalModel:
        """The open round's model, if the request names it (its ref); StaleTaskError otherwise."""
        rnd = self.round
        if rnd is None or not rnd.open or request.get("ref") != rnd.model.ref:
            raise errors.StaleTaskError(f"model {request.get('ref')!r:.40} is no longer current")
        return rnd.model

    def map_model(self, request: dict[str, Any]) -> dict[str, Any]:
        """For a child on this host: the round's model as this host's memory file, which it maps instead of
        downloading (``shared`` None: stream it), and this host's key (may its uploads come as memory files?)."""
        model = self._requested_model(request)
        if not self.settings.shared_memory:
            return {"shared": None, "host": ""}
        described = model.describe_shared() if shm.same_host(request.get("host")) else None
        if described is not None:
            self.bytes_sent += model.nbytes  # served, though not copied
            self.monitor.add_bytes(str(request.get("site")), "out", model.nbytes)
        return {"shared": described, "host": shm.host_key()}

    def handle_download(self, request: dict[str, Any], peer: Peer) -> Iterator[bytes]:
        self.authorize(peer, request.get("site"))
        self.members.check(request.get("site"), request.get("token"))
        frames = self.serve(self._requested_model(request), request)
        return self.monitor.counted(frames, str(request.get("site")), "out")

    def serve(self, model: GlobalModel, request: dict[str, Any]) -> Iterator[bytes]:
        """Frames of ``model`` from the request's (tensor, offset) on, within a download slot."""
        start = request.get("start", [0, 0])
        if not (isinstance(start, list) and len(start) == 2 and all(isinstance(x, int) for x in start)):
            raise errors.MalformedMessageError(f"invalid download start {start!r:.60}")
        return self._counted(model.frames((start[0], start[1]), self.settings.chunk_size))

    def _counted(self, frames: Iterator[bytes]) -> Iterator[bytes]:
        if not self._download_slots.acquire(timeout=self.settings.upload_slot_timeout):
            raise errors.StreamTimeoutError(
                f"no download slot free within settings.upload_slot_timeout="
                f"{self.settings.upload_slot_timeout}s (max_concurrent_downloads="
                f"{self.settings.max_concurrent_downloads})"
            )
        try:
            for frame in frames:
                self.bytes_sent += len(frame)
                yield frame
        finally:
            self._download_slots.release()

    def handle_local_download(
        self, request: dict[str, Any], peer: Peer
    ) -> list[tuple[TensorSpec, memoryview]]:
        """A virtual client's model: a private copy-on-write mapping of this host's one shared copy."""
        return self.local_model(request, peer).share().open()

    def local_model(self, request: dict[str, Any], peer: Peer) -> GlobalModel:
        """The requested model itself, for a caller in this process, after the checks a download gets."""
        self.authorize(peer, request.get("site"))
        self.members.check(request.get("site"), request.get("token"))
        return self._requested_model(request)
