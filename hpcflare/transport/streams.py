"""The two streams every transport carries, independent of how bytes move: an upload's frames, built from a
header and tensors, and a download's frames, assembled back into whole tensors (resumable at any frame).

gRPC and the in-process transport share them, so both enforce the same limits and the same frame order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.settings import Settings
from hpcflare.transport.api import UploadHeader
from hpcflare.transport.codec import (
    MAX_HEADER_BYTES,
    TensorSpec,
    empty_buffer,
    iter_chunks,
    pack_frame,
    pack_meta,
    tensor_parts,
    unpack_frame,
)

REPORT_SECTIONS = ("partial", "swarm")
"""Header sections whose per-site tables may continue in 'more' frames (a relay's partial over thousands)."""
HEADER_BUDGET = MAX_HEADER_BYTES - 4096
"""Bytes of header a frame may carry before its per-site tables are moved to 'more' frames."""
MAX_MORE_FRAMES = 1024
"""Most 'more' frames one upload may carry (a 64 MiB report: far beyond any real relay's)."""


def split_report(header: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A begin header that fits one frame, plus 'more' frames carrying the rest of its per-site tables."""
    if len(pack_meta(header)) <= HEADER_BUDGET:
        return header, []
    header, extra = dict(header), []
    for section in REPORT_SECTIONS:
        if not isinstance(header.get(section), dict):
            continue
        part = header[section] = dict(header[section])
        for key, table in list(part.items()):
            if not isinstance(table, dict) or not table:
                continue
            part[key] = {}
            batch: dict[str, Any] = {}
            size = 0
            for name, value in table.items():
                n = len(pack_meta({name: value}))
                if batch and size + n > HEADER_BUDGET:
                    extra.append({"kind": "more", "section": section, "key": key, "items": batch})
                    batch, size = {}, 0
                batch[name], size = value, size + n
            extra.append({"kind": "more", "section": section, "key": key, "items": batch})
    return header, extra


def merge_report(header: UploadHeader, frames: Iterator[bytes], max_frame_bytes: int) -> Iterator[bytes]:
    """Fold the 'more' frames that follow a begin frame into ``header``; return the remaining frames."""
    for count, frame in enumerate(frames):
        head, _ = unpack_frame(frame, max_frame_bytes)
        if head.get("kind") != "more":
            return itertools.chain([frame], frames)
        section, key, items = head.get("section"), head.get("key"), head.get("items")
        report = getattr(header, section) if section in REPORT_SECTIONS else None
        table = report.get(key) if isinstance(report, dict) else None
        if count >= MAX_MORE_FRAMES or not isinstance(table, dict) or not isinstance(items, dict):
            raise errors.MalformedMessageError(
                f"invalid report continuation ({section!r:.20}/{key!r:.20}, frame {count})"
            )
        table.update(items)
    return iter(())


def upload_frames(
    header: UploadHeader,
    tensors: Iterable[tuple[str, Any]],
    settings: Settings,
    touch: Callable[[], None] = lambda: None,
) -> Iterator[bytes]:
    """header frame (and 'more' frames when its per-site report is too large for one), then per tensor its spec and its safetensors bytes in chunk_size pieces, then 'end'.
    The array's own memory is streamed, not copied; more than max_model_bytes in all is refused."""
    sent = 0
    begin, more = split_report(header.to_wire())
    yield pack_frame({**begin, "kind": "begin"})
    for frame in more:
        yield pack_frame(frame)
    for name, value in tensors:
        spec, head, raw = tensor_parts(name, value)
        sent += spec.nbytes
        if sent > settings.max_model_bytes:
            raise errors.FrameTooLargeError(
                f"update exceeds settings.max_model_bytes={settings.max_model_bytes}"
            )
        yield pack_frame({"kind": "tensor", "spec": spec.to_wire()})
        yield pack_frame({"kind": "data", "o": 0}, head)
        for offset, piece in iter_chunks(memoryview(raw), settings.chunk_size):
            if len(piece):
                touch()
                yield pack_frame({"kind": "data", "o": len(head) + offset}, piece)
        del raw
    yield pack_frame({"kind": "end"})


def check_model_size(manifest: list[TensorSpec], settings: Settings) -> None:
    """Refuse a model larger than settings.max_model_bytes before any of it is received."""
    total = sum(s.nbytes for s in manifest)
    if total > settings.max_model_bytes:
        raise errors.FrameTooLargeError(
            f"model of {total} bytes exceeds settings.max_model_bytes={settings.max_model_bytes}"
        )


class DownloadAssembler:
    """Download frames -> whole tensors, in manifest order; ``position`` is where a resumed stream starts."""

    def __init__(self, manifest: list[TensorSpec], settings: Settings) -> None:
        check_model_size(manifest, settings)
        self.manifest, self.max_frame = manifest, settings.max_frame_bytes
        self.index, self.filled = 0, 0
        self.buf = empty_buffer(manifest[0].nbytes) if manifest else empty_buffer(0)

    @property
    def done(self) -> bool:
        return self.index >= len(self.manifest)

    @property
    def position(self) -> list[int]:
        return [self.index, self.filled]

    def feed(self, frame: bytes) -> tuple[TensorSpec, np.ndarray] | None:
        """Take one frame; a finished tensor is handed over (not copied: it is decoded in place)."""
        header, payload = unpack_frame(frame, self.max_frame)
        t, off = header.get("t"), header.get("o")
        if t != self.index or off != self.filled or self.filled + len(payload) > len(self.buf):
            raise errors.MalformedMessageError(
                f"unexpected frame t={t} o={off} (want t={self.index} o={self.filled})"
            )
        self.buf[self.filled : self.filled + len(payload)] = payload
        self.filled += len(payload)
        if self.filled < len(self.buf):
            return None
        finished = (self.manifest[self.index], self.buf)
        self.index, self.filled = self.index + 1, 0
        self.buf = empty_buffer(self.manifest[self.index].nbytes if not self.done else 0)
        return finished
