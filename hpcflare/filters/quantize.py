"""Message quantization: fewer bytes on the wire, dequantized by the receiver before aggregation.

Modes (float tensors only; others go as they are):
  fp16   IEEE half                                        2 bytes/value
  bf16   bfloat16 (top 16 bits of float32, sent as U16)   2 bytes/value
  int8   blockwise absmax: int8 values + one f32 scale per ``block`` values      ~1 byte/value
  int4   blockwise absmax: two 4-bit values per byte + one f32 scale per block   ~0.5 byte/value
A tensor ``w`` travels as ``w`` (quantized payload) plus ``w::scale`` for int modes; the upload header's
``quant`` map names the mode per tensor, and ``dequantize`` (server/relay side) restores the global model's
dtype and shape before validation continues. Worst-case error per value: half a quantization step,
``absmax(block) / 127 / 2`` (int8), ``absmax(block) / 7 / 2`` (int4).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError, UpdateRejectedError
from hpcflare.filters.api import Filter, Outgoing
from hpcflare.transport.codec import is_float

MODES = ("fp16", "bf16", "int8", "int4")
SCALE_SUFFIX = "::scale"
LEVELS = {"int8": 127, "int4": 7}


class Quantize(Filter):
    kind = "quantize"
    quantizes = True

    def __init__(self, mode: str, block: int = 64) -> None:
        if mode not in MODES:
            raise ConfigError(f"quantize mode must be one of {MODES}, got {mode!r}")
        if not 8 <= int(block) <= 1 << 20:
            raise ConfigError(f"quantize block must be between 8 and 1048576, got {block}")
        self.mode, self.block = mode, int(block)

    def apply(self, out: Outgoing) -> Outgoing:
        params: dict[str, np.ndarray] = {}
        for name, value in out.params.items():
            if not is_float(value.dtype) or value.size == 0:
                params[name] = value
                continue
            encoded = quantize(value, self.mode, self.block)
            params.update({name if k == "" else name + k: v for k, v in encoded.items()})
            out.quant[name] = {"mode": self.mode, "block": self.block}
        out.params = params
        return out


CHUNK_VALUES = 1 << 20
"""Values processed at a time: every temporary is a few of these (~4 MB each), never tensor-sized, so a 2 GB
model quantizes and dequantizes in little more than its input and output."""


def _chunks(size: int, block: int) -> range:
    """Starts of chunks that hold whole blocks (and an even count of values, for int4's pairs)."""
    step = block * max(2, CHUNK_VALUES // block // 2 * 2)
    return range(0, size, step)


def quantize(value: np.ndarray, mode: str, block: int) -> dict[str, np.ndarray]:
    """{"": payload, SCALE_SUFFIX: scales} for one tensor, chunk by chunk into preallocated outputs."""
    flat = np.ascontiguousarray(value).reshape(-1)
    size = flat.size
    if mode in ("fp16", "bf16"):
        out = np.empty(size, dtype=np.float16 if mode == "fp16" else np.uint16)
        for start in range(0, size, CHUNK_VALUES):
            part = flat[start : start + CHUNK_VALUES].astype(np.float32, copy=False)
            if mode == "fp16":
                out[start : start + part.size] = part
            else:
                bits = np.ascontiguousarray(part).view(np.uint32)
                out[start : start + part.size] = (
                    bits + 0x7FFF + ((bits >> 16) & 1)
                ) >> 16  # round to nearest even
        return {"": out.reshape(value.shape)}
    levels = LEVELS[mode]
    scales = np.empty(math.ceil(size / block), dtype=np.float32)
    payload = np.empty(
        size if mode == "int8" else (size + 1) // 2, dtype=np.int8 if mode == "int8" else np.uint8
    )
    chunks = _chunks(size, block)
    for start in chunks:
        part = flat[start : start + chunks.step].astype(np.float32, copy=False)
        n, nblocks = part.size, math.ceil(part.size / block)
        if n % block:  # the tensor's last, partial block: pad with zeros
            part = np.concatenate([part, np.zeros(nblocks * block - n, dtype=np.float32)])
        blocks = part.reshape(nblocks, block)
        chunk_scales = np.abs(blocks).max(axis=1) / levels
        scales[start // block : start // block + nblocks] = chunk_scales
        safe = np.where(chunk_scales > 0, chunk_scales, 1.0)
        q = np.clip(np.rint(blocks / safe[:, None]), -levels, levels).astype(np.int8).reshape(-1)[:n]
        if mode == "int8":
            payload[start : start + n] = q
            continue
        nibbles = (q + 8).astype(np.uint8)  # 1..15
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(8))
        payload[start // 2 : start // 2 + nibbles.size // 2] = nibbles[0::2] | (nibbles[1::2] << 4)
    return {"": payload.reshape(value.shape) if mode == "int8" else payload, SCALE_SUFFIX: scales}


def wire_shapes(base: Any, mode: str, block: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """What the receiver must expect on the wire for a tensor like ``base`` (suffix -> (shape, dtype))."""
    size = int(math.prod(base.shape))
    if mode == "fp16":
        return {"": (tuple(base.shape), np.dtype(np.float16))}
    if mode == "bf16":
        return {"": (tuple(base.shape), np.dtype(np.uint16))}
    scales = ((math.ceil(size / block),), np.dtype(np.float32))
    if mode == "int8":
        return {"": (tuple(base.shape), np.dtype(np.int8)), SCALE_SUFFIX: scales}
    return {"": (((size + 1) // 2,), np.dtype(np.uint8)), SCALE_SUFFIX: scales}


def dequantize(
    payload: np.ndarray, scales: np.ndarray | None, mode: str, block: int, base: Any
) -> np.ndarray:
    """The tensor back in the global model's dtype and shape, chunk by chunk into one preallocated output."""
    size, shape = int(math.prod(base.shape)), tuple(base.shape)
    out = np.empty(size, dtype=base.dtype)
    for start, values in dequantize_chunks(payload, scales, mode, block, base):
        out[start : start + values.size] = values
    return out.reshape(shape)


def dequantize_chunks(
    payload: np.ndarray, scales: np.ndarray | None, mode: str, block: int, base: Any
) -> Iterator[tuple[int, np.ndarray]]:
    """(first element, values in the model's dtype) a chunk at a time, ~CHUNK_VALUES each: a receiver can write
    them out (a spool file) without ever holding the whole tensor."""
    size = int(math.prod(base.shape))
    flat = payload.reshape(-1)
    if mode in ("fp16", "bf16"):
        for start in range(0, size, CHUNK_VALUES):
            part = flat[start : start + CHUNK_VALUES]
            values = part if mode == "fp16" else (part.astype(np.uint32) << 16).view(np.float32)
            yield start, values.astype(base.dtype, copy=False)
        return
    if scales is None:
        raise UpdateRejectedError(f"{mode} tensor arrived without its {SCALE_SUFFIX} tensor")
    chunks = _chunks(size, block)
    for start in chunks:
        n = min(chunks.step, size - start)
        if mode == "int8":
            q = flat[start : start + n].astype(np.float32)
        else:
            packed = flat[start // 2 : start // 2 + (n + 1) // 2]
            q = np.empty(packed.size * 2, dtype=np.float32)
            q[0::2], q[1::2] = (packed & 0x0F), (packed >> 4)
            q = q[:n] - 8
        nblocks = math.ceil(n / block)
        if n % block:
            q = np.concatenate([q, np.zeros(nblocks * block - n, dtype=np.float32)])
        values = (
            q.reshape(nblocks, block) * scales[start // block : start // block + nblocks, None]
        ).reshape(-1)[:n]
        yield start, values.astype(base.dtype, copy=False)


def check_quant_map(quant: Any, expected: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate an upload header's quant map (untrusted input)."""
    if quant is None:
        return {}
    if not isinstance(quant, dict) or len(quant) > len(expected):
        raise UpdateRejectedError("malformed 'quant' map in the upload header")
    for name, spec in quant.items():
        base = expected.get(name)
        if (
            base is None or not hasattr(base, "shape") or not is_float(base.dtype)
        ):  # no shape: any length (AnyLength)
            raise UpdateRejectedError(
                f"quantized tensor {name!r:.80} is not a fixed-shape float tensor of the global model"
            )
        if (
            not isinstance(spec, dict)
            or spec.get("mode") not in MODES
            or not isinstance(spec.get("block"), int)
            or not 8 <= spec["block"] <= 1 << 20
        ):
            raise UpdateRejectedError(f"bad quantization spec for {name!r:.80}: {spec!r:.80}")
    return quant
