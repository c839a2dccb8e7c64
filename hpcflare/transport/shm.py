"""Same-host shared memory: ranks on one node hand each other models and results as sealed memory files.

Loopback gRPC moves ~0.5 GB/s per Python stream; two processes on one node need not copy at all. A model or an
upload is written once into an anonymous memory file (memfd), sealed (no write, grow or shrink from then on),
and described to the peer: (host key, pid, fd number, inode, size). A peer on the same host with the same user
opens ``/proc/<pid>/fd/<fd>``, checks inode, size and seals, and maps it: the server's model pages become the
client's (copy-on-write where the client writes), and a result's pages become the server's. Anything that does
not hold (another host or PID namespace, another user, ``/proc`` hidden, the file gone or replaced, no seals)
raises :class:`SharedMemoryError` and the caller streams over gRPC as before. ``settings.shared_memory`` turns
the fast path off.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import mmap
import os
import socket
import sys
import tempfile
import weakref
from collections.abc import Iterable
from typing import Any

from hpcflare.errors import ConfigError, TransportError
from hpcflare.fileio import spool_dir
from hpcflare.transport.codec import TensorSpec

SEALS = (
    getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_GROW", 4) | getattr(fcntl, "F_SEAL_WRITE", 8)
)
"""What a memory file must carry before a peer trusts what it maps: nobody can change it any more."""


class SharedMemoryError(TransportError):
    """The shared-memory fast path cannot be used here (the message says why); the caller streams instead."""


@functools.lru_cache(maxsize=1)
def host_key() -> str:
    """Who can open this process's /proc/<pid>/fd links: the same host (and Slurm node name), boot, PID namespace
    and user. Empty where that cannot be told (no /proc): then no peer matches and everything streams."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    node = os.environ.get("SLURMD_NODENAME", "")  # emulated Slurm nodes on one machine stay apart
    return f"{socket.gethostname()}/{node}/{boot}/{pid_ns}/{os.getuid()}"


class ModelFileError(ConfigError):
    """The model's memory or spool file cannot be written (disk or memory full): the message says what to set."""


def same_host(key: Any) -> bool:
    return isinstance(key, str) and bool(key) and key == host_key()


class SharedModel:
    """Tensors as single-tensor safetensors blobs, back to back in one sealed memory file (a temp file where
    there is no memfd: then :meth:`describe` says so and peers stream).

    ``in_file``: in an anonymous node-local spool file instead (a model too large to pin in memory): its pages
    are page cache, evictable and outside the holder's RSS except while read through :attr:`view`, which
    :meth:`release` undoes. Peers map it read-only like a memory file (it has no seals: downloads only, see
    :func:`open_peer_file`)."""

    def __init__(self, parts: Iterable[tuple[TensorSpec, Any, Any]], in_file: bool = False) -> None:
        """``parts``: (spec, header bytes, data) per tensor, written in turn (a lazy iterable lets each tensor's
        source be freed once it is written)."""
        self._file = _spool_file() if in_file else _memory_file()
        self.in_file = in_file
        fd = self._file.fileno()
        self.specs: list[TensorSpec] = []
        self.offsets: list[int] = []
        total = 0
        try:
            for spec, head, raw in parts:
                self.specs.append(spec)
                self.offsets.append(total)
                for piece in (memoryview(head).cast("B"), memoryview(raw).cast("B")):
                    done = 0
                    while done < len(piece):
                        done += os.pwrite(fd, piece[done:], total + done)
                    total += len(piece)
            os.ftruncate(fd, max(1, total))
        except OSError as exc:
            self._file.close()
            where = f"a spool file in {spool_dir()}" if in_file else "a memory file"
            raise ModelFileError(
                f"cannot write the model ({total / 1e9:.2f} GB so far) to {where}: {exc.strerror}. "
                + (
                    "Point HPCFLARE_SPOOL_DIR at a node-local disk with room for two models, or raise "
                    "settings.model_file_bytes above the model's size to keep it in memory"
                    if in_file
                    else "The node is out of memory: use fewer ranks per node (on the server, a lower "
                    "settings.model_file_bytes puts the model in a spool file instead)"
                )
            ) from None
        self.size = total
        if in_file:
            os.fchmod(fd, 0o400)  # written once: read-only from here on
        self.sealed = not in_file and _seal(fd)
        self._map = mmap.mmap(fd, max(1, total), prot=mmap.PROT_READ)
        self.view = memoryview(self._map)

    @classmethod
    def attach(cls, description: Any, specs: list[TensorSpec], max_bytes: int) -> SharedModel:
        """Map a peer's memory file that :meth:`describe` described, holding exactly ``specs``."""
        size = sum(spec.nbytes for spec in specs)
        model = cls.__new__(cls)
        model._file = cls.open_file(description, specs, max_bytes, model_file=True)
        model.in_file = description.get("kind") == "file"  # a parent's spool file: described as such again
        model.specs, model.size, model.sealed = list(specs), size, not model.in_file
        model.offsets = cumulative(specs)
        model._map = mmap.mmap(model._file.fileno(), max(1, size), prot=mmap.PROT_READ)
        model.view = memoryview(model._map)
        return model

    @staticmethod
    def open_file(description: Any, specs: list[TensorSpec], max_bytes: int, model_file: bool = False) -> Any:
        """The peer's memory file itself, read-only and unmapped (an upload read block by block stays out of
        this process's RSS), after the checks :meth:`attach` makes. ``model_file``: a parent's model may also
        be an unsealed spool file (``in_file``)."""
        if not isinstance(description, dict):
            raise SharedMemoryError("no shared-memory description")
        size = sum(spec.nbytes for spec in specs)
        if size > max_bytes:
            raise SharedMemoryError(f"{size} bytes exceed settings.max_model_bytes={max_bytes}")
        return os.fdopen(open_peer_file(description, size, model_file), "rb", buffering=0)

    def describe(self) -> dict[str, Any] | None:
        """What a same-host peer needs to map this file (None when it is neither a sealed memfd nor a spool file)."""
        if not self.sealed and not self.in_file:
            return None
        fd = self._file.fileno()
        st = os.fstat(fd)
        return {
            "host": host_key(),
            "pid": os.getpid(),
            "fd": fd,
            "ino": st.st_ino,
            "dev": st.st_dev,
            "size": self.size,
            **({"kind": "file"} if self.in_file else {}),
        }

    def read(self, offset: int, nbytes: int) -> bytes:
        """Bytes of the file, read without touching :attr:`view` (a spool file's pages stay out of RSS)."""
        data = os.pread(self._file.fileno(), nbytes, offset)
        if len(data) != nbytes:
            raise SharedMemoryError(f"model file: short read at {offset} ({len(data)} of {nbytes} bytes)")
        return data

    def release(self, offset: int = 0, nbytes: int | None = None) -> None:
        """A spool file's pages read through :attr:`view` leave this process's RSS (they stay in the page cache and
        fault back in if read again). A memory file is left as it is: its pages are memory either way."""
        if not self.in_file or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = self.size if nbytes is None else min(self.size, offset + nbytes)
        start = offset - offset % mmap.PAGESIZE
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def blobs(self) -> list[tuple[TensorSpec, memoryview]]:
        """(spec, read-only blob) per tensor, views of the one shared mapping."""
        return [(spec, self.view[off : off + spec.nbytes]) for spec, off in zip(self.specs, self.offsets)]

    def open(self) -> list[tuple[TensorSpec, memoryview]]:
        """(spec, blob) per tensor, writable and private to the caller: pages are copied only when written."""
        view = _private_map(self._file.fileno(), max(1, self.size))
        return [(spec, view[off : off + spec.nbytes]) for spec, off in zip(self.specs, self.offsets)]

    def close(self) -> None:
        """Drop this process's handle (mappings others made, and views still alive here, keep the pages)."""
        self._file.close()


def cumulative(specs: list[TensorSpec]) -> list[int]:
    offsets, total = [], 0
    for spec in specs:
        offsets.append(total)
        total += spec.nbytes
    return offsets


def open_peer_file(description: dict[str, Any], size: int, model_file: bool = False) -> int:
    """A read-only descriptor of the peer's sealed memory file, after checking it is the one described.
    ``model_file``: a parent's model may be an unsealed spool file instead, if it is anonymous (no name anyone
    could open it by) and read-only; never an upload, whose sender could change it after it was checked."""
    fields = ("host", "pid", "fd", "ino", "dev", "size")
    if not all(key in description for key in fields) or not all(
        isinstance(description[key], int) and description[key] >= 0 for key in fields[1:]
    ):
        raise SharedMemoryError(f"malformed shared-memory description {sorted(description)!r:.120}")
    if not same_host(description["host"]):
        raise SharedMemoryError("the peer is on another host, PID namespace or user")
    if description["size"] != size:
        raise SharedMemoryError(f"shared file holds {description['size']} bytes, the tensors need {size}")
    try:
        fd = os.open(f"/proc/{description['pid']}/fd/{description['fd']}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedMemoryError(f"cannot open the peer's memory file ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if (st.st_ino, st.st_dev) != (description["ino"], description["dev"]) or st.st_size != max(1, size):
            raise SharedMemoryError("the peer's memory file was replaced before it was opened")
        if model_file and description.get("kind") == "file":
            if st.st_nlink != 0 or st.st_mode & 0o222:
                raise SharedMemoryError("the peer's model file has a name or is writable")
        elif fcntl.fcntl(fd, getattr(fcntl, "F_GET_SEALS", 1034)) & SEALS != SEALS:
            raise SharedMemoryError("the peer's memory file is not sealed against writes")
    except OSError as exc:
        os.close(fd)
        raise SharedMemoryError(f"the peer's memory file cannot be checked ({exc.strerror})") from None
    except SharedMemoryError:
        os.close(fd)
        raise
    return fd


def _seal(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_ADD_SEALS", 1033), SEALS | getattr(fcntl, "F_SEAL_SEAL", 1))
        return True
    except OSError:  # a temp file, or a kernel without sealing: peers stream
        return False


def _private_map(fd: int, size: int) -> memoryview:
    """A writable MAP_PRIVATE mapping of ``fd``, unmapped when the last view of it is gone. Python's mmap keeps
    a duplicate descriptor per mapping: 625 sites of a rank holding two rounds' models would need 1,250 of
    them, past the usual soft limit of 1,024; libc's mmap needs none."""
    libc = _libc()
    if libc is None:
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(
            ctypes.get_errno(), f"mmap of the shared model failed: {os.strerror(ctypes.get_errno())}"
        )
    buffer = (ctypes.c_char * size).from_address(addr)
    weakref.finalize(buffer, libc.munmap, ctypes.c_void_p(addr), ctypes.c_size_t(size))
    return memoryview(buffer).cast("B")


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _spool_file() -> Any:
    """An anonymous (already unlinked) file on node-local scratch."""
    return tempfile.TemporaryFile(dir=spool_dir(), prefix="hpcflare-model-", buffering=0)


def _memory_file() -> Any:
    if hasattr(os, "memfd_create"):
        flags = os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2)
        return os.fdopen(os.memfd_create("hpcflare-model", flags), "r+b", buffering=0)
    return tempfile.TemporaryFile(dir=spool_dir(), prefix="hpcflare-model-")
