"""Model files: one safetensors file per model, written atomically with its checksum, read back as numpy
arrays or as copy-on-write memory maps (the page cache shared by every rank on a node).

Staging, checkpoints, the server's initial model and the cross-site evaluation all read and write models
through these functions.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.errors import ConfigError
from hpcflare.fileio import FileInfo
from hpcflare.transport.codec import MAX_HEADER_BYTES, ST_TO_NP, write_safetensors


def write_atomic(path: Path, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> FileInfo:
    """Write tensors (numpy or torch) as one safetensors file atomically; return its size and checksum."""
    info = write_safetensors(path, tensors, metadata, checksum=True)
    assert info is not None
    return info


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise errors.MalformedMessageError(f"{path.name}: shorter than a safetensors header")
        (hlen,) = struct.unpack("<Q", raw)
        if hlen > MAX_HEADER_BYTES * 16:
            raise errors.MalformedMessageError(
                f"{path.name}: safetensors header of {hlen} bytes is too large"
            )
        try:
            header = json.loads(f.read(hlen))
        except ValueError as exc:
            raise errors.MalformedMessageError(
                f"{path.name}: safetensors header is not JSON ({exc})"
            ) from None
    header.pop("__metadata__", None)
    return header, 8 + hlen


def map_tensors(path: Path) -> dict[str, np.ndarray]:
    """Copy-on-write memory map of every tensor: pages come from the shared page cache, nothing is copied."""
    header, start = safetensors_header(path)
    mm = np.memmap(path, mode="c", dtype=np.uint8)
    out = {}
    for name, info in header.items():
        lo, hi = info["data_offsets"]
        dtype = np.dtype(ST_TO_NP[info["dtype"]])
        count = math.prod(info["shape"])
        if hi - lo != count * dtype.itemsize or start + hi > mm.size:
            raise errors.MalformedMessageError(f"{path.name}: tensor {name!r} has inconsistent offsets")
        out[name] = mm[start + lo : start + hi].view(dtype).reshape(info["shape"])
    return out


def load_params(path: Path, mapped: bool = False) -> dict[str, np.ndarray]:
    """Read a safetensors model file as numpy arrays, with a clear error for what the server can't hold.
    ``mapped``: copy-on-write views of the file (checked by safetensors first): a model about to be encoded
    into its own file is then never also a whole copy in this process's memory."""
    import safetensors.numpy
    from safetensors import safe_open

    if not path.is_file():
        raise ConfigError(f"model file {path} not found")
    try:
        if not mapped:
            return dict(safetensors.numpy.load_file(str(path)))
        with safe_open(str(path), framework="numpy") as f:  # validates the header and the offsets
            names = set(f.keys())
        params = map_tensors(path)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
    if set(params) != names:
        raise ConfigError(f"{path}: not a readable safetensors file (tensor names differ from its header)")
    return params
