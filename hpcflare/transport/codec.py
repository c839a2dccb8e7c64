"""Wire encoding: msgpack metadata with a type allowlist, safetensors per tensor, length-prefixed frames.

No pickle anywhere: metadata may only contain None/bool/int/float/str/bytes/list/dict, tensors travel as a
standalone safetensors blob each (so a receiver validates one tensor at a time and never holds two copies).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack
import numpy as np

from hpcflare.errors import FrameTooLargeError, MalformedMessageError
from hpcflare.fileio import FileInfo, atomic_write

_HEADER = struct.Struct(">I")
MAX_HEADER_BYTES = 64 << 10
MAX_META_DEPTH = 32


@functools.lru_cache(maxsize=1)
def bf16_dtype() -> np.dtype:
    """numpy has no bfloat16; ml_dtypes' is what safetensors' numpy backend uses, so a bf16 model stays bf16 on the
    server (no torch there) and on the wire. Imported on first use: ml_dtypes takes 0.5-1 s to import, which every
    rank would otherwise pay at start-up for models that are mostly fp32."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    if name == "BF16":
        return bf16_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _DtypeTable(dict[str, Any]):
    """safetensors dtype tag -> numpy dtype, with BF16 resolved (ml_dtypes imported) only when a tensor has it."""

    def __missing__(self, key: str) -> Any:
        if key != "BF16":
            raise KeyError(key)
        self[key] = value = bf16_dtype()
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key == "BF16" or dict.__contains__(self, key)


# safetensors dtype tag <-> numpy dtype
ST_TO_NP = _DtypeTable(
    {
        "F64": np.float64,
        "F32": np.float32,
        "F16": np.float16,
        "I64": np.int64,
        "I32": np.int32,
        "I16": np.int16,
        "I8": np.int8,
        "U8": np.uint8,
        "U16": np.uint16,
        "U32": np.uint32,
        "U64": np.uint64,
        "BOOL": np.bool_,
    }
)
NP_TO_ST = {np.dtype(v).str: k for k, v in ST_TO_NP.items()}


def _is_bf16(dtype: Any) -> bool:
    """A bfloat16 array can only exist once ml_dtypes is imported (by the user, torch interop or a BF16 tensor)."""
    return "ml_dtypes" in sys.modules and np.dtype(dtype) == bf16_dtype()


def st_tag(dtype: np.dtype) -> str | None:
    """The safetensors tag of a numpy dtype, None when safetensors has none."""
    tag = NP_TO_ST.get(dtype.str)
    return tag if tag is not None else ("BF16" if _is_bf16(dtype) else None)


def _wire_default(obj: Any) -> Any:
    """Turn numpy/torch scalars and small arrays (common in user metrics/meta) into plain types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item") and hasattr(obj, "numel") and obj.numel() == 1:  # torch scalar tensor
        return obj.item()
    if hasattr(obj, "value") and isinstance(obj.value, (str, int)):  # enums
        return obj.value
    raise TypeError(
        f"cannot send value of type {type(obj).__name__} in metadata; use numbers, strings, lists or dicts"
    )


def pack_meta(obj: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, default=_wire_default, use_bin_type=True)
        return packed
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"metadata not serializable: {exc}") from exc


def _reject_ext(code: int, data: bytes) -> Any:
    raise MalformedMessageError(f"msgpack extension type {code} is not allowed in metadata")


def _check_types(obj: Any, depth: int = 0) -> None:
    if depth > MAX_META_DEPTH:
        raise MalformedMessageError(f"metadata nested deeper than {MAX_META_DEPTH}")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return
    if isinstance(obj, list):
        for item in obj:
            _check_types(item, depth + 1)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise MalformedMessageError(f"metadata key of type {type(key).__name__} is not allowed")
            _check_types(value, depth + 1)
        return
    raise MalformedMessageError(f"metadata value of type {type(obj).__name__} is not allowed")


def unpack_meta(data: bytes | memoryview, expect: type = dict) -> Any:
    """Decode untrusted msgpack; only plain JSON-like types (plus bytes) come out."""
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False, ext_hook=_reject_ext, timestamp=0)
    except MalformedMessageError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessageError(f"undecodable metadata ({type(exc).__name__}: {exc})") from None
    _check_types(obj)
    if not isinstance(obj, expect):
        raise MalformedMessageError(f"metadata must be a {expect.__name__}, got {type(obj).__name__}")
    return obj


def unpack_map(data: bytes | memoryview) -> dict[str, Any]:
    """:func:`unpack_meta` of a mapping (a request or a reply), typed as one."""
    obj: dict[str, Any] = unpack_meta(data, dict)
    return obj


def empty_buffer(nbytes: int) -> np.ndarray:
    """A writable byte buffer that is about to be filled, not zero-filled first: bytearray(n) touches every page
    once for the zeros and again for the data (half a download's time on a fresh multi-GB tensor)."""
    return np.empty(nbytes, dtype=np.uint8)


def pack_frame(header: Mapping[str, Any], payload: bytes | memoryview = b"") -> bytes:
    head = pack_meta(dict(header))
    return b"".join((_HEADER.pack(len(head)), head, payload))


def unpack_frame(frame: bytes, max_frame_bytes: int) -> tuple[dict[str, Any], memoryview]:
    if len(frame) > max_frame_bytes:
        raise FrameTooLargeError(f"frame of {len(frame)} bytes exceeds max_frame_bytes={max_frame_bytes}")
    if len(frame) < _HEADER.size:
        raise MalformedMessageError(f"frame of {len(frame)} bytes is shorter than its length prefix")
    (hlen,) = _HEADER.unpack_from(frame)
    if hlen > MAX_HEADER_BYTES or _HEADER.size + hlen > len(frame):
        raise MalformedMessageError(f"frame header length {hlen} is invalid for a {len(frame)}-byte frame")
    view = memoryview(frame)
    header = unpack_meta(view[_HEADER.size : _HEADER.size + hlen])
    return header, view[_HEADER.size + hlen :]


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a model manifest: what a receiver should expect before any bytes arrive."""

    name: str
    dtype: str  # safetensors tag, e.g. "F32"
    shape: tuple[int, ...]
    nbytes: int  # size of the encoded safetensors blob

    def to_wire(self) -> list[Any]:
        return [self.name, self.dtype, list(self.shape), self.nbytes]

    @classmethod
    def from_wire(cls, item: Any) -> TensorSpec:
        if (
            not isinstance(item, list)
            or len(item) != 4
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or not isinstance(item[2], list)
            or not all(isinstance(d, int) and d >= 0 for d in item[2])
            or not isinstance(item[3], int)
            or item[3] < 0
        ):
            raise MalformedMessageError(f"invalid tensor spec {item!r:.200}")
        return cls(item[0], item[1], tuple(item[2]), item[3])


def is_float(dtype: Any) -> bool:
    """A floating-point dtype, bfloat16 included (numpy does not count it as np.floating)."""
    return np.issubdtype(dtype, np.floating) or _is_bf16(dtype)


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def encode_tensor(name: str, value: Any) -> tuple[bytes, str, tuple[int, ...]]:
    """Encode one numpy array or torch tensor as a standalone safetensors blob -> (blob, dtype tag, shape)."""
    spec, head, raw = tensor_parts(name, value)
    return b"".join((head, memoryview(raw))), spec.dtype, spec.shape


def _blob_header(blob: bytes | bytearray | memoryview | np.ndarray) -> tuple[dict[str, Any], int]:
    if len(blob) < 8:
        raise MalformedMessageError("safetensors blob shorter than its 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", blob)
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(blob):
        raise MalformedMessageError(f"safetensors header length {hlen} invalid for a {len(blob)}-byte blob")
    try:
        header = json.loads(bytes(blob[8 : 8 + hlen]))
    except ValueError as exc:
        raise MalformedMessageError(f"safetensors header is not JSON: {exc}") from None
    return header, 8 + hlen


def view_tensor(blob: bytes, name: str) -> np.ndarray:
    """Zero-copy read-only numpy view of a blob this process encoded itself (trusted)."""
    header, start = _blob_header(blob)
    info = header[name]
    lo, hi = info["data_offsets"]
    return np.frombuffer(
        blob, dtype=ST_TO_NP[info["dtype"]], count=math.prod(info["shape"]), offset=start + lo
    ).reshape(info["shape"])


TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
}


def parse_single(
    blob: bytes | bytearray | memoryview | np.ndarray, spec: TensorSpec, total: int | None = None
) -> tuple[str, int, int]:
    """Strictly check a single-tensor safetensors blob against its spec -> (dtype tag, data start, count).

    ``total``: the whole blob's length when ``blob`` holds only its beginning (a tensor spooled to disk)."""
    header, start = _blob_header(blob)
    header.pop("__metadata__", None)
    if list(header) != [spec.name]:
        raise MalformedMessageError(f"tensor blob for {spec.name!r} contains {sorted(header)!r:.200}")
    info = header[spec.name]
    if not isinstance(info, dict) or info.get("dtype") not in ITEMSIZE:
        raise MalformedMessageError(
            f"tensor {spec.name!r}: unknown dtype {info.get('dtype') if isinstance(info, dict) else info!r:.40}"
        )
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedMessageError(f"tensor {spec.name!r}: invalid shape {shape!r:.60}")
    if tuple(shape) != spec.shape:
        raise MalformedMessageError(
            f"tensor {spec.name!r} has shape {tuple(shape)}, manifest said {spec.shape}"
        )
    count = math.prod(shape)
    nbytes = count * ITEMSIZE[info["dtype"]]
    if offsets != [0, nbytes] or start + nbytes != (len(blob) if total is None else total):
        raise MalformedMessageError(
            f"tensor {spec.name!r}: data offsets {offsets!r:.60} do not match its shape and size"
        )
    return info["dtype"], start, count


def decode_tensor(
    blob: bytes | bytearray | memoryview | np.ndarray, spec: TensorSpec, framework: str = "numpy"
) -> Any:
    """Decode an untrusted single-tensor blob, zero-copy: the array uses the blob's memory."""
    tag, start, count = parse_single(blob, spec)
    if framework == "pytorch":
        import torch

        if memoryview(blob).readonly:  # torch wants a writable buffer
            blob = bytearray(blob)
        if count == 0:
            return torch.zeros(spec.shape, dtype=getattr(torch, TORCH_DTYPES[tag]))
        return torch.frombuffer(
            blob, dtype=getattr(torch, TORCH_DTYPES[tag]), count=count, offset=start
        ).reshape(spec.shape)
    return np.frombuffer(blob, dtype=ST_TO_NP[tag], count=count, offset=start).reshape(spec.shape)


def as_framework(value: Any, framework: str) -> Any:
    """A numpy array as the framework's tensor (torch: sharing its memory); anything else unchanged."""
    if framework == "pytorch" and isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def raw_bytes(name: str, value: Any) -> tuple[str, list[int], np.ndarray]:
    """(safetensors dtype tag, shape, uint8 view of the data) of a numpy array or torch tensor, without copying
    when the value is already contiguous."""
    if _is_torch(value):
        import torch

        tensor = value.detach().cpu().contiguous()
        tag = {v: k for k, v in TORCH_DTYPES.items()}.get(str(tensor.dtype).replace("torch.", ""))
        if tag is None:
            raise MalformedMessageError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        raw = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else np.zeros(0, np.uint8)
        return tag, list(tensor.shape), raw
    arr = np.ascontiguousarray(np.asarray(value))
    tag = st_tag(arr.dtype)
    if tag is None:
        raise MalformedMessageError(f"tensor {name!r} has unsupported dtype {arr.dtype}; use a numeric dtype")
    return tag, list(arr.shape), arr.reshape(-1).view(np.uint8)


def _header_bytes(entries: dict[str, Any]) -> bytes:
    head = json.dumps(entries, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head


def tensor_parts(name: str, value: Any) -> tuple[TensorSpec, bytes, np.ndarray]:
    """A single-tensor safetensors blob as (spec, header bytes, data view): streamed without assembling it."""
    tag, shape, raw = raw_bytes(name, value)
    head = _header_bytes({name: {"dtype": tag, "shape": shape, "data_offsets": [0, raw.nbytes]}})
    return TensorSpec(name, tag, tuple(shape), len(head) + raw.nbytes), head, raw


def safetensors_writer(tensors: Any, metadata: dict[str, str] | None = None) -> Callable[[IO[bytes]], None]:
    """A writer for hpcflare.fileio.atomic_write: (name -> numpy array | torch tensor) as one safetensors
    file, streaming each tensor's own buffer (no whole-model copy in memory, unlike safetensors.*.save_file)."""

    def write(f: IO[bytes]) -> None:
        entries: dict[str, Any] = {}
        buffers, offset = [], 0
        for name, value in tensors.items():
            tag, shape, raw = raw_bytes(name, value)
            entries[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + raw.nbytes]}
            buffers.append(raw)
            offset += raw.nbytes
        if metadata:
            entries["__metadata__"] = dict(metadata)
        f.write(_header_bytes(entries))
        for raw in buffers:
            f.write(memoryview(raw))

    return write


def write_safetensors(
    path: Any, tensors: Any, metadata: dict[str, str] | None = None, checksum: bool = False
) -> FileInfo | None:
    """Write tensors as one safetensors file, atomically (temp + fsync + rename)."""
    return atomic_write(Path(path), safetensors_writer(tensors, metadata), checksum=checksum)


def iter_chunks(
    blob: bytes | memoryview, chunk_size: int, offset: int = 0
) -> Iterator[tuple[int, memoryview]]:
    """(offset, slice) pairs covering blob[offset:]; an empty blob still yields one empty chunk."""
    view = memoryview(blob)
    if offset >= len(view):
        yield len(view), view[len(view) :]
        return
    for start in range(offset, len(view), chunk_size):
        yield start, view[start : start + chunk_size]
