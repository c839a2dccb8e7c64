"""Read one client upload from a frame stream, validating every tensor against the global model.

Nothing from the upload is used until the whole stream has arrived and checked out: names, shapes, dtypes,
sizes, finiteness. A bad upload raises a precise error and leaves the round's aggregate untouched.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import FrameTooLargeError, MalformedMessageError, UpdateRejectedError
from hpcflare.fileio import spool_dir
from hpcflare.filters.quantize import (
    SCALE_SUFFIX,
    check_quant_map,
    dequantize,
    dequantize_chunks,
    wire_shapes,
)
from hpcflare.settings import Settings
from hpcflare.strategy.api import UpdateKind, describe_expectation, shape_matches
from hpcflare.tensors import acc_dtype, all_finite, blocks_of
from hpcflare.transport.api import UploadHeader
from hpcflare.transport.codec import (
    MAX_HEADER_BYTES,
    ST_TO_NP,
    TensorSpec,
    decode_tensor,
    empty_buffer,
    is_float,
    parse_single,
    raw_bytes,
    unpack_frame,
)
from hpcflare.transport.model_files import safetensors_header
from hpcflare.transport.shm import SharedModel, cumulative
from hpcflare.transport.streams import merge_report


class _Like:
    """Shape/dtype stand-in: what a relay's partial sums must look like (floats, even for int tensors)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, dtype


def partial_expectation(expected: Mapping[str, Any]) -> dict[str, Any]:
    """Float sums of the expected shapes, except expectations whose partials keep their form (masked integers
    summed modulo 2^64, summed ciphertexts)."""
    return {
        k: v if getattr(v, "keeps_partials", False) else _Like(tuple(v.shape), acc_dtype(v.dtype))
        for k, v in expected.items()
    }


class UploadParams(Mapping[str, np.ndarray]):
    """A validated upload: small tensors in memory, large ones (>= settings.spool_tensor_bytes) in an
    anonymous temp file, read back one at a time while folding, so a decoded upload costs ~1 tensor of
    memory instead of a whole model. close() (or garbage collection) deletes the file.

    ``source``: a read-only file already holding the tensors (a same-host peer's memory file): its large
    tensors are read from there block by block, never mapped whole or copied into the spool."""

    def __init__(self, spool_bytes: int, source: Any = None) -> None:
        self._spool_bytes = spool_bytes
        self._memory: dict[str, np.ndarray] = {}
        self._spooled: dict[str, tuple[Any, int, np.dtype, tuple[int, ...]]] = {}
        self._file: Any = None
        self._source = source
        self._stream_at = 0

    def put(self, name: str, value: np.ndarray) -> None:
        self.drop(name)
        if value.nbytes < self._spool_bytes:
            self._memory[name] = value
            return
        offset = self._spool().seek(0, os.SEEK_END)
        self._file.write(memoryview(np.ascontiguousarray(value)).cast("B"))
        self._spooled[name] = (self._file, offset, value.dtype, tuple(value.shape))

    def _spool(self) -> Any:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=spool_dir(), prefix="hpcflare-upload-")
        return self._file

    def streams(self, spec: TensorSpec, base: Any) -> bool:
        """Stream this tensor to disk as it arrives? (large, and already in the global model's dtype)"""
        return (
            spec.nbytes >= self._spool_bytes
            and ST_TO_NP.get(spec.dtype) is not None
            and np.dtype(ST_TO_NP[spec.dtype]) == np.dtype(base.dtype)
        )

    def begin_stream(self, at: int | None = None) -> None:
        """A tensor's blob follows in the spool (or lies in ``source`` at offset ``at``)."""
        self._stream_at = self._spool().seek(0, os.SEEK_END) if at is None else at

    def write_stream(self, payload: bytes | memoryview) -> None:
        self._file.write(payload)

    def end_stream(self, spec: TensorSpec, base: Any) -> None:
        """Validate the spooled blob (header, shape, dtype, finite values) block by block, then keep it."""
        file = self._file if self._source is None else self._source
        file.flush()
        head = bytearray(min(spec.nbytes, 8 + MAX_HEADER_BYTES))
        os.preadv(file.fileno(), [head], self._stream_at)
        tag, start, count = parse_single(head, spec, total=spec.nbytes)
        dtype = np.dtype(ST_TO_NP[tag])
        if dtype != np.dtype(base.dtype) or not shape_matches(spec.shape, base):
            raise UpdateRejectedError(
                f"tensor {spec.name!r} is {tag}{list(spec.shape)}, the global model has "
                f"{base.dtype} {describe_expectation(base)}"
            )
        self._keep(spec.name, file, self._stream_at + start, dtype, spec.shape)

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes

    @property
    def nbytes(self) -> int:
        """Payload bytes of the tensors held (in memory and spooled)."""
        spooled = sum(dtype.itemsize * int(np.prod(shape)) for _, _, dtype, shape in self._spooled.values())
        return spooled + sum(value.nbytes for value in self._memory.values())

    def put_chunks(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], chunks: Iterable[np.ndarray]
    ) -> None:
        """A tensor produced a chunk at a time (dequantized): appended to the spool as it comes, then checked."""
        offset = self._spool().seek(0, os.SEEK_END)
        for values in chunks:
            self._file.write(memoryview(np.ascontiguousarray(values, dtype=dtype)).cast("B"))
        if self._file.tell() - offset != math.prod(shape) * dtype.itemsize:
            raise MalformedMessageError(f"tensor {name!r}: dequantized to the wrong size")
        self._keep(name, self._file, offset, dtype, shape)

    def adopt(self, name: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        """A tensor of the model's dtype already lying in ``source`` at ``offset``: checked block by block, kept there."""
        self._keep(name, self._source, offset, dtype, shape)

    def _keep(self, name: str, file: Any, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.drop(name)
        self._spooled[name] = (file, offset, dtype, tuple(shape))
        if is_float(dtype) and not all(all_finite(block) for _, block in self.iter_blocks(name)):
            self.drop(name)
            raise UpdateRejectedError(f"tensor {name!r} contains NaN or Inf values; the update is rejected")

    def iter_blocks(self, name: str, block_bytes: int = 4 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """(element offset, 1-D block) pairs over a tensor, a few MB at a time (spooled ones read back so, into one
        reused buffer: a block is valid until the next one is asked for)."""
        if name in self._memory:
            value = self._memory[name]
            yield from blocks_of(value, block_bytes // value.dtype.itemsize)
            return
        file, offset, dtype, shape = self._spooled[name]
        count = math.prod(shape)
        step = max(1, block_bytes // dtype.itemsize)
        file.flush()
        buf = empty_buffer(min(step, count) * dtype.itemsize)  # one buffer, refilled: fresh pages cost faults
        for first in range(0, count, step):
            n = min(step, count - first)
            part = buf[: n * dtype.itemsize]
            if os.preadv(file.fileno(), [part], offset + first * dtype.itemsize) != part.nbytes:
                raise MalformedMessageError(f"spooled tensor {name!r} could not be read back")
            yield first, np.frombuffer(part, dtype=dtype)

    def drop(self, name: str) -> None:
        """Forget a tensor (its spooled bytes stay in the temp file until close())."""
        self._memory.pop(name, None)
        self._spooled.pop(name, None)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._memory:
            return self._memory[name]
        file, offset, dtype, shape = self._spooled[name]
        file.flush()
        return np.frombuffer(
            _pread(file, name, offset, math.prod(shape) * dtype.itemsize), dtype=dtype
        ).reshape(shape)

    def __iter__(self) -> Iterator[str]:
        yield from self._memory
        yield from self._spooled

    def __len__(self) -> int:
        return len(self._memory) + len(self._spooled)

    def __contains__(self, name: object) -> bool:
        return name in self._memory or name in self._spooled

    def close(self) -> None:
        for file in (self._file, self._source):
            if file is not None:
                file.close()
        self._file = self._source = None


def _pread(file: Any, name: str, offset: int, nbytes: int) -> np.ndarray:
    buf = empty_buffer(nbytes)
    if nbytes and os.preadv(file.fileno(), [buf], offset) != nbytes:
        raise MalformedMessageError(f"spooled tensor {name!r} could not be read back")
    return buf


def read_upload(
    frames: Iterator[bytes],
    settings: Settings,
    expected: Mapping[str, np.ndarray] | Callable[[Any], Mapping[str, np.ndarray]],
    on_header: Callable[[UploadHeader], Any],
) -> tuple[UploadHeader, Any, UploadParams]:
    """Return (header, on_header's result, params). ``on_header`` authenticates and may reject early;
    ``expected`` may be a function of its result (the round the header named, not whatever was current
    when the stream began)."""
    first = next(frames, None)
    if first is None:
        raise MalformedMessageError("empty upload stream")
    raw, _ = unpack_frame(first, settings.max_frame_bytes)
    if raw.pop("kind", None) != "begin":
        raise MalformedMessageError("upload must start with a 'begin' frame")
    header = UploadHeader.from_wire(raw)
    context, expected, quant = _open(
        header, expected, on_header
    )  # authenticated before any continuation is read
    frames = merge_report(header, frames, settings.max_frame_bytes)
    if header.mapped is not None:
        last = next(frames, None)
        if (
            last is None
            or unpack_frame(last, settings.max_frame_bytes)[0].get("kind") != "end"
            or next(frames, None)
        ):
            raise MalformedMessageError("an upload in a memory file must not stream tensors too")
        return header, context, _read_mapped(header.mapped, settings, expected, quant)
    params = UploadParams(settings.spool_tensor_bytes)
    try:
        _read_tensors(frames, settings, _wire_expectation(expected, quant), params)
        _dequantize(params, quant, expected)
    except BaseException:
        params.close()
        raise
    return header, context, params


def _read_mapped(
    mapped: Any, settings: Settings, expected: Mapping[str, Any], quant: dict[str, dict[str, Any]]
) -> UploadParams:
    """An upload a same-host peer left in a sealed memory file, given the checks a streamed one gets, blob by
    blob (each a strict single-tensor safetensors). Large tensors are read from the peer's file a block at a
    time when checked and again when folded, never mapped whole: concurrent uploads cost the server a few
    blocks each, not a model each (the pages are the peer's until it closes the file)."""
    if not isinstance(mapped, dict) or not isinstance(mapped.get("tensors"), list):
        raise MalformedMessageError("mapped upload: expected {'file': ..., 'tensors': [...]}")
    try:
        specs = [TensorSpec.from_wire(item) for item in mapped["tensors"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessageError(f"mapped upload: invalid tensor list ({exc})") from None
    source = SharedModel.open_file(mapped.get("file"), specs, settings.max_model_bytes)
    params = UploadParams(settings.spool_tensor_bytes, source=source)
    wire = _wire_expectation(expected, quant)
    try:
        for spec, offset in zip(specs, cumulative(specs)):
            spec = _check_spec(spec, wire, params)
            if params.streams(spec, wire[spec.name]):
                params.begin_stream(at=offset)
                params.end_stream(spec, wire[spec.name])
            else:
                params.put(
                    spec.name, _finish(spec, _pread(source, spec.name, offset, spec.nbytes), wire[spec.name])
                )
        _dequantize(params, quant, expected)
    except BaseException:
        params.close()
        raise
    return params


def read_arrays(
    header: UploadHeader,
    tensors: Iterable[tuple[str, Any]],
    settings: Settings,
    expected: Mapping[str, np.ndarray] | Callable[[Any], Mapping[str, np.ndarray]],
    on_header: Callable[[UploadHeader], Any],
) -> tuple[UploadHeader, Any, UploadParams]:
    """:func:`read_upload` for a caller in this process (a virtual client): the same checks on its own arrays
    (numpy or torch, viewed, not copied); the result holds them until closed, the caller must not change them
    before this returns."""
    context, expected, quant = _open(header, expected, on_header)
    return header, context, _take_arrays(tensors, settings, expected, quant)


def _take_arrays(
    tensors: Iterable[tuple[str, Any]],
    settings: Settings,
    expected: Mapping[str, Any],
    quant: dict[str, dict[str, Any]],
) -> UploadParams:
    """Check arrays already in memory (a virtual client's own, a mapped upload's) like streamed tensors."""
    wire = _wire_expectation(expected, quant)
    params = UploadParams(settings.max_model_bytes + 1)  # never spooled: they already are in memory
    total = 0
    try:
        for name, value in tensors:
            tag, shape, raw = raw_bytes(name, value)
            spec = _check_spec(TensorSpec(name, tag, tuple(shape), raw.nbytes), wire, params)
            total += spec.nbytes
            if total > settings.max_model_bytes:
                raise FrameTooLargeError(
                    f"update exceeds settings.max_model_bytes={settings.max_model_bytes}"
                )
            array = raw.view(ST_TO_NP[tag]).reshape(spec.shape)
            params.put(name, _validated(spec, array, wire[name]))
        _dequantize(params, quant, expected)
    except BaseException:
        params.close()
        raise
    return params


def _open(
    header: UploadHeader,
    expected: Mapping[str, np.ndarray] | Callable[[Any], Mapping[str, np.ndarray]],
    on_header: Callable[[UploadHeader], Any],
) -> tuple[Any, Mapping[str, Any], dict[str, dict[str, Any]]]:
    """Authenticate an upload's (checked) header -> (on_header's result, expected tensors, quantization map)."""
    context = on_header(header)
    if callable(expected):
        expected = expected(context)
    quant = check_quant_map(header.quant, expected)
    if header.params_type == UpdateKind.PARTIAL:
        if quant:
            raise UpdateRejectedError("partial aggregates cannot be quantized")
        expected = partial_expectation(expected)
    return context, expected, quant


def _wire_expectation(expected: Mapping[str, Any], quant: dict[str, dict[str, Any]]) -> Mapping[str, Any]:
    """Quantized tensors arrive as their payload (+ a scale tensor): expect exactly those shapes/dtypes."""
    if not quant:
        return expected
    wire = dict(expected)
    for name, spec in quant.items():
        for suffix, (shape, dtype) in wire_shapes(expected[name], spec["mode"], spec["block"]).items():
            wire[name + suffix] = _Like(shape, dtype)
    return wire


def _dequantize(params: UploadParams, quant: dict[str, dict[str, Any]], expected: Mapping[str, Any]) -> None:
    for name, spec in quant.items():
        if name not in params:
            params.drop(name + SCALE_SUFFIX)
            continue  # a quantized tensor the site did not send keeps its global value
        scales = params[name + SCALE_SUFFIX] if name + SCALE_SUFFIX in params else None
        if scales is not None and not all_finite(scales):
            raise UpdateRejectedError(
                f"tensor {name!r} has NaN or Inf quantization scales; the update is rejected"
            )
        base, payload = expected[name], params[name]
        params.drop(name + SCALE_SUFFIX)
        if math.prod(base.shape) * np.dtype(base.dtype).itemsize >= params.spool_bytes:
            chunks = dequantize_chunks(payload, scales, spec["mode"], spec["block"], base)
            params.put_chunks(name, np.dtype(base.dtype), tuple(base.shape), (values for _, values in chunks))
            continue  # written out chunk by chunk, checked for NaN/Inf as it is kept: never whole in memory
        value = dequantize(payload, scales, spec["mode"], spec["block"], base)
        params.put(name, _validated(TensorSpec(name, "F32", tuple(value.shape), value.nbytes), value, base))


def _read_tensors(
    frames: Iterator[bytes], settings: Settings, expected: Mapping[str, Any], params: UploadParams
) -> None:
    total = 0
    spec: TensorSpec | None = None
    buf = empty_buffer(0)
    filled = 0
    streaming = False
    for frame in frames:
        head, payload = unpack_frame(frame, settings.max_frame_bytes)
        kind = head.get("kind")
        if kind == "data":
            if spec is None or head.get("o") != filled or filled + len(payload) > spec.nbytes:
                raise MalformedMessageError(
                    f"out-of-order data frame (offset {head.get('o')!r:.20}, have {filled})"
                )
            if streaming:  # large tensor: straight to the spool file, never whole in memory
                params.write_stream(payload)
            else:
                buf[filled : filled + len(payload)] = payload
            filled += len(payload)
            if filled == spec.nbytes:
                if streaming:
                    params.end_stream(spec, expected[spec.name])
                else:
                    params.put(spec.name, _finish(spec, buf, expected[spec.name]))
                spec, buf, filled = None, empty_buffer(0), 0
        elif kind == "tensor":
            if spec is not None:
                raise MalformedMessageError(
                    f"tensor {spec.name!r} incomplete ({filled}/{spec.nbytes} bytes) before the next one"
                )
            spec = _check_spec(TensorSpec.from_wire(head.get("spec")), expected, params)
            total += spec.nbytes
            if total > settings.max_model_bytes:
                raise FrameTooLargeError(
                    f"update exceeds settings.max_model_bytes={settings.max_model_bytes}"
                )
            streaming = params.streams(spec, expected[spec.name])
            buf, filled = empty_buffer(0 if streaming else spec.nbytes), 0
            if streaming:
                params.begin_stream()
            if spec.nbytes == 0:
                raise MalformedMessageError(f"tensor {spec.name!r} announced 0 bytes")
        elif kind == "end":
            if spec is not None:
                raise MalformedMessageError(
                    f"stream ended inside tensor {spec.name!r} ({filled}/{spec.nbytes} bytes)"
                )
            return
        else:
            raise MalformedMessageError(f"unknown frame kind {kind!r:.40}")
    raise MalformedMessageError("upload stream ended without an 'end' frame (client died mid-upload?)")


def _check_spec(spec: TensorSpec, expected: Mapping[str, np.ndarray], seen: Mapping[str, Any]) -> TensorSpec:
    base = expected.get(spec.name)
    if base is None:
        raise UpdateRejectedError(f"unknown tensor {spec.name!r:.100}: not in the global model")
    if spec.name in seen:
        raise UpdateRejectedError(f"tensor {spec.name!r} sent twice")
    if not shape_matches(spec.shape, base):
        raise UpdateRejectedError(
            f"tensor {spec.name!r} has shape {spec.shape}, the global model has {describe_expectation(base)}"
        )
    dtype = ST_TO_NP.get(spec.dtype)
    if dtype is None:
        raise UpdateRejectedError(f"tensor {spec.name!r} has unsupported dtype {spec.dtype!r:.20}")
    same_kind = is_float(dtype) and is_float(base.dtype)
    if np.dtype(dtype) != base.dtype and not same_kind:
        raise UpdateRejectedError(
            f"tensor {spec.name!r} has dtype {spec.dtype}, the global model has {base.dtype}"
        )
    limit = math.prod(spec.shape) * np.dtype(dtype).itemsize + 8 + MAX_HEADER_BYTES
    if spec.nbytes > limit:
        raise FrameTooLargeError(
            f"tensor {spec.name!r} announced {spec.nbytes} bytes, more than its shape allows ({limit})"
        )
    return spec


def read_staged(
    path: Path, specs: list[TensorSpec], expected: Mapping[str, np.ndarray], spool_bytes: int = 4 << 20
) -> UploadParams:
    """Validate a result a client left on the shared filesystem like a streamed one. Large tensors in the global
    model's dtype are checked and later folded straight from the file (held open: a rename over it changes
    nothing here), a block at a time; others are read whole, one at a time."""
    try:
        header, start = safetensors_header(path)
        source = open(path, "rb", buffering=0)
    except OSError as exc:
        raise MalformedMessageError(f"staged result {path.name}: unreadable ({exc.strerror})") from None
    params = UploadParams(spool_bytes, source=source)
    try:
        size = os.fstat(source.fileno()).st_size
        for spec in specs:
            _check_spec(spec, expected, params)
            meta = header.get(spec.name)
            lo, hi = meta.get("data_offsets", (0, 0)) if isinstance(meta, dict) else (0, 0)
            dtype = np.dtype(ST_TO_NP[spec.dtype])
            if not (
                isinstance(lo, int)
                and isinstance(hi, int)
                and 0 <= lo <= hi
                and start + hi <= size
                and hi - lo == math.prod(spec.shape) * dtype.itemsize
            ):
                raise MalformedMessageError(
                    f"staged result {path.name}: tensor {spec.name!r} has inconsistent offsets"
                )
            base = expected[spec.name]
            if dtype == np.dtype(base.dtype) and hi - lo >= spool_bytes:  # shape: checked by _check_spec
                params.adopt(spec.name, start + lo, dtype, spec.shape)
            else:
                value = np.frombuffer(_pread(source, spec.name, start + lo, hi - lo), dtype=dtype).reshape(
                    spec.shape
                )
                params.put(spec.name, _validated(spec, value, base))
    except BaseException:
        params.close()
        raise
    return params


def _finish(spec: TensorSpec, buf: np.ndarray, base: np.ndarray) -> np.ndarray:
    return _validated(spec, decode_tensor(buf, spec), base)


def _validated(spec: TensorSpec, value: np.ndarray, base: np.ndarray) -> np.ndarray:
    if not shape_matches(tuple(value.shape), base):
        raise UpdateRejectedError(
            f"tensor {spec.name!r} has shape {tuple(value.shape)}, the global model has "
            f"{describe_expectation(base)}"
        )
    if value.dtype != base.dtype:
        with np.errstate(over="ignore"):  # an overflow becomes Inf, rejected just below
            value = value.astype(base.dtype)
    if is_float(value.dtype) and not all_finite(value):
        raise UpdateRejectedError(f"tensor {spec.name!r} contains NaN or Inf values; the update is rejected")
    return value
