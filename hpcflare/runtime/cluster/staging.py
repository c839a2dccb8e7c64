"""Shared-filesystem staging: write each round's global model once, let every node memory-map it.

Layout under the staging root (default ``<job_dir>/staging``; any path on Lustre/GPFS/NFS):

    models/<ref>.safetensors            the round's global model, written to a temp name then renamed
    results/<ref>/<site>.safetensors    a client's result, same protocol

Readers only open names announced in a task/upload message, check size and sha256 before use, and
resolve every name inside the root (path traversal is refused). Older rounds are deleted as soon as a
newer model is published. Anything unexpected makes a client fall back to gRPC streaming.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.fileio import sha256_file
from hpcflare.transport.codec import TensorSpec
from hpcflare.transport.model_files import safetensors_header, write_atomic


def confined(root: Path, name: Any) -> Path:
    """``root/name`` if it stays inside root; path traversal and absolute names are refused."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\x00" in name:
        raise errors.MalformedMessageError(f"invalid staged file name {name!r:.100}")
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise errors.MalformedMessageError(f"staged file {name!r:.100} escapes the staging root {root}")
    return path


def verified(root: Path, info: Any) -> Path:
    """The announced staged file, after checking it exists, has the announced size and checksum."""
    if not isinstance(info, dict):
        raise errors.MalformedMessageError("staged descriptor must be a mapping")
    path = confined(root, info.get("file"))
    if not path.is_file():
        raise FileNotFoundError(path)
    if path.stat().st_size != info.get("nbytes"):
        raise errors.MalformedMessageError(
            f"{path.name}: size {path.stat().st_size} != announced {info.get('nbytes')}"
        )
    if sha256_file(path) != info.get("sha256"):
        raise errors.MalformedMessageError(f"{path.name}: checksum mismatch (partial or corrupted write?)")
    return path


class Stager:
    """Server side: publish round models, read staged results, clean up stale rounds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "results").mkdir(parents=True, exist_ok=True)

    def publish(self, ref: str, params: Mapping[str, np.ndarray]) -> dict[str, Any]:
        name = f"models/{ref}.safetensors"
        info = write_atomic(self.root / name, params)
        self.cleanup(keep=ref)
        return {"file": name, **info}

    def cleanup(self, keep: str) -> None:
        for old in (self.root / "models").glob("*.safetensors"):
            if old.stem != keep:
                old.unlink(missing_ok=True)
        for old in (self.root / "results").iterdir():
            if old.name != keep and old.is_dir():
                for f in old.iterdir():
                    f.unlink(missing_ok=True)
                old.rmdir()

    def read_result(self, info: Any, max_bytes: int) -> tuple[Path, list[TensorSpec]]:
        path = verified(self.root, info)
        if path.stat().st_size > max_bytes:
            raise errors.FrameTooLargeError(
                f"staged result of {path.stat().st_size} bytes exceeds settings.max_model_bytes"
            )
        header, _ = safetensors_header(path)
        specs = []
        for name, meta in header.items():
            lo, hi = meta.get("data_offsets", (0, 0))
            specs.append(
                TensorSpec(name, str(meta.get("dtype")), tuple(meta.get("shape", ())), int(hi) - int(lo))
            )
        return path, specs
