"""The federation's wire: typed gRPC services on one port, msgpack frames, and file bundles.

Two services share the standing server's port; the caller's certificate decides which it may use:

    hpcflare.federation.Site    Poll (long-poll for its jobs), Report (site-side state), FetchApp (a job's app,
                                hash-checked), PutLogs (the site's logs, where its policy allows)
    hpcflare.federation.Admin   Submit, List, Status, Abort, Download, Sites

Every message is one msgpack frame ``{"h": header, "d": bytes}``: headers are plain data (no pickle), ``d``
carries file bytes. A file bundle is a stream of frames, each file's chunks in order with its sha256 and size
announced first; the receiver writes each file atomically and refuses a bundle whose names leave its
destination, whose bytes exceed its limit or whose hashes do not match.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import msgpack

from hpcflare import errors
from hpcflare.fileio import atomic_write, sha256_file

SITE_SERVICE = "hpcflare.federation.Site"
ADMIN_SERVICE = "hpcflare.federation.Admin"

CHUNK_BYTES = 1 << 20
"""File bytes per frame of a bundle."""
MAX_HEADER_BYTES = 4 << 20
"""Largest frame a federation call accepts besides the file chunk it may carry."""
MAX_MESSAGE_BYTES = CHUNK_BYTES + MAX_HEADER_BYTES

SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,254}$")
"""One component of a file name inside a bundle: no '..', no hidden tricks, no separators."""


class SiteRpc(enum.StrEnum):
    POLL = "Poll"
    REPORT = "Report"
    FETCH_APP = "FetchApp"
    PUT_LOGS = "PutLogs"


class AdminRpc(enum.StrEnum):
    SUBMIT = "Submit"
    LIST = "List"
    STATUS = "Status"
    ABORT = "Abort"
    DOWNLOAD = "Download"
    SITES = "Sites"


STREAMED_IN = {SiteRpc.PUT_LOGS, AdminRpc.SUBMIT}
"""Calls whose request is a stream of frames (a bundle); the others send one frame."""
STREAMED_OUT = {SiteRpc.FETCH_APP, AdminRpc.DOWNLOAD}
"""Calls whose reply is a stream of frames (a bundle); the others answer one frame."""


def pack(header: dict[str, Any], data: bytes = b"") -> bytes:
    packed: bytes = msgpack.packb({"h": header, "d": data}, use_bin_type=True)
    return packed


def unpack(frame: bytes) -> tuple[dict[str, Any], bytes]:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise errors.FrameTooLargeError(
            f"a federation frame of {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}"
        )
    try:
        obj = msgpack.unpackb(frame, raw=False, max_bin_len=CHUNK_BYTES, max_str_len=MAX_HEADER_BYTES)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise errors.MalformedMessageError(f"undecodable federation frame: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("h"), dict) or not isinstance(obj.get("d"), bytes):
        raise errors.MalformedMessageError("a federation frame must be {h: mapping, d: bytes}")
    return obj["h"], obj["d"]


def safe_name(name: Any) -> str:
    """A relative file name inside a bundle, checked: never absolute, never '..', only plain components."""
    if not isinstance(name, str) or not name or len(name) > 1024:
        raise errors.MalformedMessageError(f"bad file name {name!r:.80} in a bundle")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or not parts or not all(SAFE_PART.match(p) for p in parts):
        raise errors.MalformedMessageError(
            f"file name {name!r:.120} in a bundle is not a plain relative path (no '..', no absolute paths, "
            "letters, digits and _.+=@- only)"
        )
    return "/".join(parts)


def bundle_files(
    root: Path, names: Iterable[str], renamed: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Entries for ``names`` under ``root`` that are files now; ``renamed``: file under root -> the name it
    arrives under. Their size and sha256 are taken by :func:`send_bundle` from the file it opens, so a file
    that is replaced or appended to meanwhile still arrives whole and consistent."""
    manifest = []
    for name in names:
        if (root / safe_name(name)).is_file():
            entry = {"name": (renamed or {}).get(name, name)}
            if entry["name"] != name:
                entry["path"] = name
            manifest.append(entry)
    return manifest


def file_entry(root: Path, name: str) -> dict[str, Any]:
    """A committed manifest entry: name, size and sha256 of a file that no longer changes."""
    path = root / safe_name(name)
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _opened(f: Any, entry: dict[str, Any]) -> tuple[int, str]:
    """Size and sha256 to announce for an opened file: the entry's when committed, else the first bytes
    the file holds now (an append after this is not sent; a replacement leaves the opened file as it was)."""
    if "sha256" in entry:
        return int(entry["size"]), str(entry["sha256"])
    size, digest = os.fstat(f.fileno()).st_size, hashlib.sha256()
    left = size
    while left:
        block = f.read(min(CHUNK_BYTES, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    f.seek(0)
    return size - left, digest.hexdigest()


def send_bundle(
    root: Path, manifest: list[dict[str, Any]], head: dict[str, Any] | None = None
) -> Iterator[bytes]:
    """Frames of a bundle: an optional leading header frame, then each file's chunks, then an end frame."""
    if head is not None:
        yield pack(head)
    sent = 0
    for entry in manifest:
        path = root / safe_name(entry.get("path") or entry["name"])
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if "sha256" in entry:
                raise errors.MalformedMessageError(
                    f"{entry['name']!r} of a committed bundle is missing"
                ) from None
            continue  # removed since it was listed: the end frame counts what was sent
        with f:
            size, sha256 = _opened(f, entry)
            offset = 0
            while True:
                block = f.read(min(CHUNK_BYTES, size - offset))
                last = offset + len(block) >= size or not block
                yield pack(
                    {"file": entry["name"], "size": size, "sha256": sha256, "offset": offset, "last": last},
                    block,
                )
                offset += len(block)
                if last:
                    break
        sent += 1
    yield pack({"end": True, "files": sent})


def receive_bundle(
    frames: Iterator[bytes], dest: Path, max_bytes: int, accept: Callable[[str], bool] = lambda name: True
) -> dict[str, dict[str, Any]]:
    """Write a bundle's files under ``dest`` (each atomically, its sha256 checked); return name -> entry.
    Raises MalformedMessageError / FrameTooLargeError before anything outside ``dest`` is touched."""
    received: dict[str, dict[str, Any]] = {}
    total = 0
    pending: tuple[dict[str, Any], bytes] | None = None

    def next_frame() -> tuple[dict[str, Any], bytes]:
        nonlocal pending
        if pending is not None:
            frame, pending = pending, None
            return frame
        try:
            return unpack(next(frames))
        except StopIteration:
            raise errors.MalformedMessageError("a bundle ended before its end frame") from None

    while True:
        header, data = next_frame()
        if header.get("end"):
            if header.get("files") != len(received):
                raise errors.MalformedMessageError(
                    f"bundle announced {header.get('files')} files but carried {len(received)}"
                )
            return received
        name = safe_name(header.get("file"))
        size, digest = header.get("size"), header.get("sha256")
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str) or name in received:
            raise errors.MalformedMessageError(f"bad or repeated file header for {name!r} in a bundle")
        if not accept(name):
            raise errors.MalformedMessageError(f"a bundle may not carry {name!r}")
        total += size
        if total > max_bytes:
            raise errors.FrameTooLargeError(
                f"bundle exceeds its limit of {max_bytes} bytes at {name!r}; raise "
                "settings.federation_max_app_bytes for larger jobs"
            )
        first = (header, data)

        def write(
            f: Any, first: tuple[dict[str, Any], bytes] = first, name: str = name, size: int = size
        ) -> str:
            nonlocal pending
            digest_now, written = hashlib.sha256(), 0
            header, data = first
            while True:
                if header.get("file") != name or header.get("offset") != written:
                    raise errors.MalformedMessageError(f"bundle chunks of {name!r} are out of order")
                written += len(data)
                if written > size:
                    raise errors.MalformedMessageError(f"{name!r} is longer than its announced {size} bytes")
                digest_now.update(data)
                f.write(data)
                if header.get("last"):
                    break
                header, data = next_frame()
            if written != size:
                raise errors.MalformedMessageError(f"{name!r} has {written} bytes, announced {size}")
            return digest_now.hexdigest()

        path = dest / name
        got: list[str] = []

        def writer(f: Any, got: list[str] = got, write: Callable[[Any], str] = write) -> None:
            got.append(write(f))

        atomic_write(path, writer)
        if got[0] != digest:
            path.unlink(missing_ok=True)
            raise errors.MalformedMessageError(
                f"{name!r} arrived with sha256 {got[0][:12]}, announced {digest[:12]}"
            )
        received[name] = {"name": name, "size": size, "sha256": digest}


# ---------------------------------------------------------------------------------------------------- calls


def method_path(service: str, rpc: str) -> str:
    return f"/{service}/{rpc}"


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, errors.PermissionDeniedError | errors.UnknownClientError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, errors.PolicyRefusedError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, errors.FrameTooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, errors.MalformedMessageError | errors.ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, KeyError | LookupError):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.INTERNAL


def error_from(exc: grpc.RpcError, what: str, server: str) -> errors.HpcflareError:
    """A federation call's gRPC failure as the typed error its detail names."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    kind, _, text = detail.partition(": ")
    message = f"{what}: {text or detail}"
    if code == grpc.StatusCode.UNAVAILABLE:
        if "handshake" in detail.lower() or "ssl" in detail.lower() or "socket closed" in detail.lower():
            return errors.CertificateError(
                f"{what}: the standing server at {server} refused the TLS handshake ({detail}); use a startup "
                "kit from this project's `hpcflare provision`"
            )
        return errors.PeerGoneError(f"{what}: the standing server at {server} is unreachable ({detail})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.StreamTimeoutError(f"{what}: no answer from {server} in time ({detail})")
    by_kind: dict[str, type[errors.HpcflareError]] = {
        "PermissionDeniedError": errors.PermissionDeniedError,
        "UnknownClientError": errors.UnknownClientError,
        "PolicyRefusedError": errors.PolicyRefusedError,
        "ConfigError": errors.ConfigError,
        "FrameTooLargeError": errors.FrameTooLargeError,
        "MalformedMessageError": errors.MalformedMessageError,
        "KeyError": errors.ConfigError,
        "LookupError": errors.ConfigError,
    }
    if kind in by_kind:
        return by_kind[kind](message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDeniedError(message)
    return errors.TransportError(f"{message} (grpc status {code})")
