"""One way to write a file that other ranks read: temp file in the same directory, fsync, rename.

Readers (other ranks, a resumed server, ``hpcflare logs``) never see a partial file, and a crash mid-write
leaves the previous version in place. Every job file, staged model, checkpoint, result and strategy output
goes through :func:`atomic_write` (a directory of them, such as a job's kits, through :func:`publish_dir`);
nothing else in hpcflare renames temp files by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypedDict

Writer = Callable[[IO[bytes]], None]


def _default_mode() -> int:
    """What open() would create: 0666 less the process umask (temp files start at 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


DEFAULT_MODE = _default_mode()


class FileInfo(TypedDict):
    """What a reader needs to check a file it did not write: its sha256 and size in bytes."""

    sha256: str
    nbytes: int


class _Hashing:
    """A write-only file wrapper that hashes and counts what passes through it (no re-read after writing)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self._digest, self.nbytes = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self._digest.update(data)
        self.nbytes += memoryview(data).nbytes
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def atomic_write(
    path: Path, data: bytes | str | Writer, *, checksum: bool = False, mode: int | None = None
) -> FileInfo | None:
    """Write ``data`` (bytes, text, or a callable that writes into a binary file) to ``path`` atomically.

    ``checksum=True`` returns the sha256 and size, computed while writing. ``mode`` (e.g. 0o600 for keys;
    default: what open() would create) is applied to the temp file before the first byte is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, DEFAULT_MODE if mode is None else mode)
        with os.fdopen(fd, "wb") as raw:
            f: Any = _Hashing(raw) if checksum else raw
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: say which one (ENOSPC, quota)
        raise
    return FileInfo(sha256=f.hexdigest(), nbytes=f.nbytes) if checksum else None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def atomic_write_json(path: Path, obj: Any, **dumps: Any) -> None:
    atomic_write(path, json.dumps(obj, **dumps))


def atomic_link(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link; a copy where links are not supported)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_dir(built: Path, target: Path) -> None:
    """Rename a directory built under a temporary name to ``target``: readers see all of it or none. Fails if
    ``target`` exists (another rank published first)."""
    os.rename(built, target)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spool_dir() -> str:
    """Node-local scratch (large uploads, models where there is no memfd): HPCFLARE_SPOOL_DIR, else Slurm's job
    tmp, else the system tmp."""
    return os.environ.get("HPCFLARE_SPOOL_DIR") or os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()
