"""The server's global model: encoded once per round (safetensors per tensor), served to every client.

Arrays are zero-copy views into the encoded blobs, so holding the model and serving it costs ~1x its size.
A client rank moves its copy into a memory file (:meth:`GlobalModel.share`) that its virtual clients map
copy-on-write: K sites read one physical copy, and a site that writes into its params copies only the pages
it writes.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from hpcflare.errors import ConfigError, MalformedMessageError
from hpcflare.runtime.staging import write_atomic
from hpcflare.transport.codec import TensorSpec, encode_tensor, iter_chunks, pack_frame, tensor_parts, view_tensor


_SHARE_LOCK = threading.Lock()
"""Serializes GlobalModel.share(): the first of a rank's site threads moves the model, the others wait."""


class GlobalModel:
    def __init__(self, params: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], version: int) -> None:
        """``params`` may be a lazy iterable of (name, array): each array can be freed once it is encoded."""
        self.version = version
        self.ref = f"v{version}"
        self.blobs: dict[str, bytes] = {}
        self.params: dict[str, np.ndarray] = {}
        self.specs: list[TensorSpec] = []
        for name, arr in (params.items() if isinstance(params, Mapping) else params):
            blob, dtype, shape = encode_tensor(name, arr)
            self.blobs[name] = blob
            self.params[name] = view_tensor(blob, name)
            self.specs.append(TensorSpec(name, dtype, shape, len(blob)))
        self._shared: SharedModel | None = None

    @classmethod
    def from_blobs(cls, ref: str, version: int, specs: list[TensorSpec], blobs: dict[str, bytes]) -> "GlobalModel":
        """Adopt blobs exactly as received from upstream (a relay's cache): no decode/encode, no extra copy."""
        model = cls.__new__(cls)
        model.version, model.ref, model.specs, model.blobs = version, ref, list(specs), blobs
        model.params = {spec.name: view_tensor(blobs[spec.name], spec.name) for spec in specs}
        model._shared = None
        return model

    @classmethod
    def shared_copy(cls, ref: str, version: int, params: Mapping[str, Any]) -> "GlobalModel":
        """A model encoded straight into a shared memory file (see :meth:`share`): one copy of ``params``."""
        parts = {name: tensor_parts(name, value) for name, value in params.items()}
        shared = SharedModel([spec for spec, _, _ in parts.values()],
                             {name: (head, raw) for name, (_, head, raw) in parts.items()})
        model = cls.from_blobs(ref, version, shared.specs, {
            spec.name: shared.view[off:off + spec.nbytes] for spec, off in zip(shared.specs, shared.offsets)})
        model._shared = shared
        return model

    def share(self) -> "SharedModel":
        """Move the blobs into one memory file (once) and serve them from there: this host keeps read-only views
        of it, and every :meth:`SharedModel.open` is a private copy-on-write mapping of the same pages."""
        with _SHARE_LOCK:
            return self._shared or self._share()

    def _share(self) -> "SharedModel":
        if self._shared is None:
            self._shared = SharedModel(self.specs, self.blobs)
            view = self._shared.view
            # in place: a round's aggregator holds this very dict, and must let go of the old blobs too
            self.blobs.update({spec.name: view[off:off + spec.nbytes]
                               for spec, off in zip(self.specs, self._shared.offsets)})
            self.params.update({spec.name: view_tensor(self.blobs[spec.name], spec.name) for spec in self.specs})
        return self._shared

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def frames(self, start: tuple[int, int], chunk_size: int) -> Iterator[bytes]:
        index, offset = start
        if not 0 <= index <= len(self.specs) or offset < 0:
            raise MalformedMessageError(f"invalid download start {start!r}")
        for i in range(index, len(self.specs)):
            blob = self.blobs[self.specs[i].name]
            if offset > len(blob):
                raise MalformedMessageError(f"download offset {offset} beyond tensor {i} ({len(blob)} bytes)")
            for off, piece in iter_chunks(blob, chunk_size, offset):
                if len(piece):
                    yield pack_frame({"t": i, "o": off}, piece)
            offset = 0

    def save(self, path: Path) -> dict[str, Any]:
        """Write all tensors into one safetensors file, atomically; return its sha256 and size."""
        return write_atomic(path, self.params, metadata={"hpcflare_version": str(self.version)})


def load_params(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors model file as numpy arrays, with a clear error for what the server can't hold."""
    import safetensors.numpy

    if not path.is_file():
        raise ConfigError(f"model file {path} not found")
    try:
        return dict(safetensors.numpy.load_file(str(path)))
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None


class SharedModel:
    """A model's blobs in one anonymous memory file (memfd; a temp file where there is none)."""

    def __init__(self, specs: list[TensorSpec], blobs: Mapping[str, Any]) -> None:
        """``blobs``: name -> the tensor's blob, or a tuple of pieces that make it up (header, data)."""
        self.specs = list(specs)
        self.offsets, total = [], 0
        for spec in self.specs:
            self.offsets.append(total)
            total += spec.nbytes
        self.size = total
        self._file = _memory_file()
        os.ftruncate(self._file.fileno(), max(1, total))
        self._map = mmap.mmap(self._file.fileno(), max(1, total))
        for spec, off in zip(self.specs, self.offsets):
            for part in blobs[spec.name] if isinstance(blobs[spec.name], tuple) else [blobs[spec.name]]:
                n = memoryview(part).nbytes
                self._map[off:off + n] = memoryview(part).cast("B")
                off += n
        self.view = memoryview(self._map).toreadonly()
        self._lock = threading.Lock()

    def open(self) -> list[tuple[TensorSpec, memoryview]]:
        """(spec, blob) per tensor, writable and private to the caller: pages are copied only when written."""
        with self._lock:  # mmap of a file object shared by site threads
            private = mmap.mmap(self._file.fileno(), max(1, self.size), flags=mmap.MAP_PRIVATE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(private)
        return [(spec, view[off:off + spec.nbytes]) for spec, off in zip(self.specs, self.offsets)]


def _memory_file() -> Any:
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("hpcflare-model", os.MFD_CLOEXEC), "r+b", buffering=0)
    from hpcflare.runtime.upload import spool_dir

    return tempfile.TemporaryFile(dir=spool_dir(), prefix="hpcflare-model-")
