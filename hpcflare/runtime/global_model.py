"""The server's global model: encoded once per round (safetensors per tensor), served to every client.

Arrays are zero-copy views into the encoded blobs, so holding the model and serving it costs ~1x its size.
A client rank moves its copy into a memory file (:meth:`GlobalModel.share`) that its virtual clients map
copy-on-write: K sites read one physical copy, and a site that writes into its params copies only the pages
it writes.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
import weakref
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from hpcflare.errors import ConfigError, MalformedMessageError
from hpcflare.runtime.staging import write_atomic
from hpcflare.fileio import spool_dir
from hpcflare.transport.codec import TensorSpec, iter_chunks, pack_frame, tensor_parts, view_tensor


_SHARE_LOCK = threading.Lock()
"""Serializes GlobalModel.share(): the first of a rank's site threads moves the model, the others wait."""


class GlobalModel:
    def __init__(self, params: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], version: int) -> None:
        """``params`` may be a lazy iterable of (name, array): each array can be freed once it is encoded. The
        blobs are encoded straight into a shared memory file, so serving them in-process copies nothing."""
        items = params.items() if isinstance(params, Mapping) else params
        shared = SharedModel((tensor_parts(name, value) for name, value in items))
        self._adopt(f"v{version}", version, shared)

    def _adopt(self, ref: str, version: int, shared: "SharedModel") -> None:
        self.version, self.ref, self.specs, self._shared = version, ref, list(shared.specs), shared
        self.blobs: dict[str, Any] = {spec.name: shared.view[off:off + spec.nbytes]
                                      for spec, off in zip(shared.specs, shared.offsets)}
        self.params: dict[str, np.ndarray] = {spec.name: view_tensor(self.blobs[spec.name], spec.name)
                                              for spec in shared.specs}

    @classmethod
    def from_blobs(cls, ref: str, version: int, specs: list[TensorSpec], blobs: dict[str, Any]) -> "GlobalModel":
        """Adopt blobs exactly as received from upstream (a relay's cache): no decode/encode, no extra copy."""
        model = cls.__new__(cls)
        model.version, model.ref, model.specs, model.blobs = version, ref, list(specs), blobs
        model.params = {spec.name: view_tensor(blobs[spec.name], spec.name) for spec in specs}
        model._shared = None
        return model

    @classmethod
    def shared_copy(cls, ref: str, version: int, params: Mapping[str, Any]) -> "GlobalModel":
        """A model encoded into a shared memory file under ``ref`` (e.g. read from a staged file)."""
        model = cls.__new__(cls)
        model._adopt(ref, version, SharedModel(tensor_parts(name, value) for name, value in params.items()))
        return model

    def alias(self) -> "GlobalModel":
        """Another host's handle on this very model (a client rank beside SimEnv's server): no copy at all."""
        model = GlobalModel.__new__(GlobalModel)
        model._adopt(self.ref, self.version, self.share())
        return model

    def share(self) -> "SharedModel":
        """Move the blobs into one memory file (once) and serve them from there: this host keeps read-only views
        of it, and every :meth:`SharedModel.open` is a private copy-on-write mapping of the same pages."""
        with _SHARE_LOCK:
            return self._shared or self._share()

    def _share(self) -> "SharedModel":
        if self._shared is None:
            self._shared = SharedModel.of_blobs(self.specs, self.blobs)
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

    def __init__(self, parts: Iterable[tuple[TensorSpec, Any, Any]]) -> None:
        """``parts``: (spec, header bytes, data) per tensor, written in turn (a lazy iterable lets each tensor's
        source be freed once it is written)."""
        self._file = _memory_file()
        fd = self._file.fileno()
        self.specs: list[TensorSpec] = []
        self.offsets: list[int] = []
        total = 0
        for spec, head, raw in parts:
            self.specs.append(spec)
            self.offsets.append(total)
            for piece in (memoryview(head).cast("B"), memoryview(raw).cast("B")):
                done = 0
                while done < len(piece):
                    done += os.pwrite(fd, piece[done:], total + done)
                total += len(piece)
        self.size = total
        os.ftruncate(fd, max(1, total))
        self._map = mmap.mmap(fd, max(1, total), prot=mmap.PROT_READ)
        self.view = memoryview(self._map)

    @classmethod
    def of_blobs(cls, specs: list[TensorSpec], blobs: Mapping[str, Any]) -> "SharedModel":
        return cls((spec, b"", blobs[spec.name]) for spec in specs)

    def open(self) -> list[tuple[TensorSpec, memoryview]]:
        """(spec, blob) per tensor, writable and private to the caller: pages are copied only when written."""
        view = _private_map(self._file.fileno(), max(1, self.size))
        return [(spec, view[off:off + spec.nbytes]) for spec, off in zip(self.specs, self.offsets)]


def _private_map(fd: int, size: int) -> memoryview:
    """A writable MAP_PRIVATE mapping of ``fd``, unmapped when the last view of it is gone. Python's mmap keeps
    a duplicate descriptor per mapping: 625 sites of a rank holding two rounds' models would need 1,250 of
    them, past the usual soft limit of 1,024; libc's mmap needs none."""
    libc = _libc()
    if libc is None:
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap of the shared model failed: {os.strerror(ctypes.get_errno())}")
    buffer = (ctypes.c_char * size).from_address(addr)
    weakref.finalize(buffer, libc.munmap, ctypes.c_void_p(addr), ctypes.c_size_t(size))
    return memoryview(buffer).cast("B")


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _memory_file() -> Any:
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("hpcflare-model", os.MFD_CLOEXEC), "r+b", buffering=0)
    return tempfile.TemporaryFile(dir=spool_dir(), prefix="hpcflare-model-")
