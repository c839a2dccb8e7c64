"""The two streams every transport carries, independent of how bytes move: an upload's frames, built from a
header and tensors, and a download's frames, assembled back into whole tensors (resumable at any frame).

gRPC and the in-process transport share them, so both enforce the same limits and the same frame order.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from hpcflare import errors
from hpcflare.settings import Settings
from hpcflare.transport.codec import TensorSpec, iter_chunks, pack_frame, tensor_parts, unpack_frame


def upload_frames(header: dict, tensors: Iterable[tuple[str, Any]], settings: Settings,
                  touch: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """header frame, then per tensor its spec and its safetensors bytes in chunk_size pieces, then 'end'.
    The array's own memory is streamed, not copied; more than max_model_bytes in all is refused."""
    sent = 0
    yield pack_frame({**header, "kind": "begin"})
    for name, value in tensors:
        spec, head, raw = tensor_parts(name, value)
        sent += spec.nbytes
        if sent > settings.max_model_bytes:
            raise errors.FrameTooLargeError(f"update exceeds settings.max_model_bytes={settings.max_model_bytes}")
        yield pack_frame({"kind": "tensor", "spec": spec.to_wire()})
        yield pack_frame({"kind": "data", "o": 0}, head)
        for offset, piece in iter_chunks(memoryview(raw), settings.chunk_size):
            if len(piece):
                touch()
                yield pack_frame({"kind": "data", "o": len(head) + offset}, piece)
        del raw
    yield pack_frame({"kind": "end"})


class DownloadAssembler:
    """Download frames -> whole tensors, in manifest order; ``position`` is where a resumed stream starts."""

    def __init__(self, manifest: list[TensorSpec], settings: Settings) -> None:
        total = sum(s.nbytes for s in manifest)
        if total > settings.max_model_bytes:
            raise errors.FrameTooLargeError(f"model of {total} bytes exceeds settings.max_model_bytes="
                                            f"{settings.max_model_bytes}")
        self.manifest, self.max_frame = manifest, settings.max_frame_bytes
        self.index, self.filled = 0, 0
        self.buf = bytearray(manifest[0].nbytes) if manifest else bytearray()

    @property
    def done(self) -> bool:
        return self.index >= len(self.manifest)

    @property
    def position(self) -> list[int]:
        return [self.index, self.filled]

    def feed(self, frame: bytes) -> tuple[TensorSpec, bytearray] | None:
        """Take one frame; a finished tensor is handed over (not copied: it is decoded in place)."""
        header, payload = unpack_frame(frame, self.max_frame)
        t, off = header.get("t"), header.get("o")
        if t != self.index or off != self.filled or self.filled + len(payload) > len(self.buf):
            raise errors.MalformedMessageError(f"unexpected frame t={t} o={off} (want t={self.index} o={self.filled})")
        self.buf[self.filled:self.filled + len(payload)] = payload
        self.filled += len(payload)
        if self.filled < len(self.buf):
            return None
        finished = (self.manifest[self.index], self.buf)
        self.index, self.filled = self.index + 1, 0
        self.buf = bytearray(self.manifest[self.index].nbytes) if not self.done else bytearray()
        return finished
