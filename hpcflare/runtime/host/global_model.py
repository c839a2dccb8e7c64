"""The server's global model: encoded once per round (safetensors per tensor), served to every client.

Arrays are zero-copy views into the encoded blobs, so holding the model and serving it costs ~1x its size.
The blobs live in a memory file (:meth:`GlobalModel.share`) that a client rank's virtual clients map
copy-on-write: K sites read one physical copy, and a site that writes into its params copies only the pages
it writes. A model of at least ``settings.model_file_bytes`` lives in a node-local spool file instead: served
with pread and read through its mapping only when needed (then released), so the server's memory holds the
round's running sum, not the model it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import MalformedMessageError
from hpcflare.fileio import FileInfo
from hpcflare.transport.codec import TensorSpec, iter_chunks, pack_frame, tensor_parts, view_tensor
from hpcflare.transport.model_files import write_atomic
from hpcflare.transport.shm import SharedModel


class ModelParams(dict[str, Any]):
    """name -> read-only array view of a model; ``release(name)`` lets a reader (the aggregator, after folding a
    tensor) hand the pages of a spool-file model back (see :meth:`GlobalModel.release`)."""

    def __init__(self, items: dict[str, np.ndarray], release: Callable[..., None]) -> None:
        super().__init__(items)
        self.release = release


class GlobalModel:
    def __init__(
        self,
        params: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
        version: int,
        ref: str | None = None,
        in_file: bool = False,
    ) -> None:
        """``params`` may be a lazy iterable of (name, array): each array can be freed once it is encoded. The
        blobs are encoded straight into a shared memory file, so serving them in-process copies nothing.
        ``ref``: the name the parent gave this model (default ``v<version>``); ``in_file``: in a node-local
        spool file instead of memory (see the module docstring)."""
        items = params.items() if isinstance(params, Mapping) else params
        self._adopt(
            ref or f"v{version}",
            version,
            SharedModel((tensor_parts(name, value) for name, value in items), in_file=in_file),
        )

    def _adopt(
        self,
        ref: str,
        version: int,
        shared: SharedModel | None,
        specs: list[TensorSpec] | None = None,
        blobs: dict[str, Any] | None = None,
    ) -> None:
        """Hold ``blobs`` (default: views of ``shared``) and read-only array views of them."""
        self.version, self.ref, self._shared = version, ref, shared
        self.specs = list(shared.specs if shared is not None else specs or [])
        self.blobs: dict[str, Any] = (
            blobs or {}
            if shared is None
            else {
                spec.name: shared.view[off : off + spec.nbytes]
                for spec, off in zip(shared.specs, shared.offsets)
            }
        )
        self.params: dict[str, np.ndarray] = ModelParams(
            {spec.name: view_tensor(self.blobs[spec.name], spec.name) for spec in self.specs}, self.release
        )
        # where each tensor's data lies in a spool file (after its blob's header), for release()
        self._data_at: dict[str, tuple[int, int]] = (
            {}
            if shared is None or not shared.in_file
            else {
                spec.name: (off + spec.nbytes - self.params[spec.name].nbytes, off + spec.nbytes)
                for spec, off in zip(shared.specs, shared.offsets)
            }
        )

    @classmethod
    def from_blobs(
        cls, ref: str, version: int, specs: list[TensorSpec], blobs: dict[str, Any], shared: bool = False
    ) -> GlobalModel:
        """Adopt blobs exactly as received from upstream (a relay's cache): no decode/encode, no extra copy;
        ``shared``: moved into a shared memory file first (a client rank's model, which its sites map)."""
        model = cls.__new__(cls)
        if shared:
            model._adopt(ref, version, SharedModel((spec, b"", blobs[spec.name]) for spec in specs))
        else:
            model._adopt(ref, version, None, specs, blobs)
        return model

    @classmethod
    def from_shared(cls, ref: str, version: int, shared: SharedModel) -> GlobalModel:
        """Adopt a memory file mapped from the parent (a same-host child's copy of the parent's own pages)."""
        model = cls.__new__(cls)
        model._adopt(ref, version, shared)
        return model

    def describe_shared(self) -> dict[str, Any] | None:
        """How a same-host peer maps this model (None: not in a sealed memory file; it streams)."""
        return self._shared.describe() if self._shared is not None else None

    def alias(self) -> GlobalModel:
        """Another host's handle on this very model (a client rank beside SimEnv's server): no copy at all."""
        model = GlobalModel.__new__(GlobalModel)
        model._adopt(self.ref, self.version, self.share())
        return model

    def share(self) -> SharedModel:
        """The memory file holding the blobs: every :meth:`SharedModel.open` is a private copy-on-write mapping of
        its pages. Server models, staged and in-process ones and a client rank's have one; a relay's has none."""
        if self._shared is None:
            raise RuntimeError(
                f"model {self.ref} is not in shared memory (a relay's cache is served over gRPC only)"
            )
        return self._shared

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    @property
    def in_file(self) -> bool:
        return self._shared is not None and self._shared.in_file

    def release(self, name: str | None = None, start: int = 0, nbytes: int | None = None) -> None:
        """Pages read from a spool-file model leave this process's RSS: all of them, one tensor's, or ``nbytes``
        of its data from byte ``start`` on (they stay in the page cache and fault back in when read again)."""
        if not self.in_file:
            return
        assert self._shared is not None
        if name is None:
            self._shared.release()
            return
        if name not in self._data_at:
            return
        data, end = self._data_at[name]
        self._shared.release(data + start, (end - data - start) if nbytes is None else nbytes)

    def frames(self, start: tuple[int, int], chunk_size: int) -> Iterator[bytes]:
        index, offset = start
        if not 0 <= index <= len(self.specs) or offset < 0:
            raise MalformedMessageError(f"invalid download start {start!r}")
        shared = self._shared if self.in_file else None
        for i in range(index, len(self.specs)):
            blob = self.blobs[self.specs[i].name]
            if offset > len(blob):
                raise MalformedMessageError(f"download offset {offset} beyond tensor {i} ({len(blob)} bytes)")
            if shared is not None:  # read, not mapped: serving a spool-file model adds nothing to RSS
                base = shared.offsets[i]
                for off in range(offset, len(blob), chunk_size):
                    yield pack_frame(
                        {"t": i, "o": off}, shared.read(base + off, min(chunk_size, len(blob) - off))
                    )
            else:
                for off, piece in iter_chunks(blob, chunk_size, offset):
                    if len(piece):
                        yield pack_frame({"t": i, "o": off}, piece)
            offset = 0

    def save(self, path: Path) -> FileInfo:
        """Write all tensors into one safetensors file, atomically; return its sha256 and size."""
        try:
            return write_atomic(path, self.params, metadata={"hpcflare_version": str(self.version)})
        finally:
            self.release()
