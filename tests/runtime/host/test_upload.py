"""Upload validation: every malformed or invalid upload is refused with a precise reason."""

import numpy as np
import pytest

from hpcflare.errors import FrameTooLargeError, MalformedMessageError, UpdateRejectedError
from hpcflare.runtime.host.upload import read_upload
from hpcflare.settings import Settings
from hpcflare.transport.codec import TensorSpec, encode_tensor, iter_chunks, pack_frame
from tests.conftest import header as make_header

S = Settings(chunk_size=64, max_frame_bytes=2048)
EXPECTED = {"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)}


def frames_for(tensors, header=None, end=True):
    yield pack_frame({"kind": "begin", **make_header().to_wire(), **(header or {})})
    for name, value in tensors:
        blob, dtype, shape = encode_tensor(name, value)
        yield pack_frame({"kind": "tensor", "spec": TensorSpec(name, dtype, shape, len(blob)).to_wire()})
        for off, piece in iter_chunks(blob, S.chunk_size):
            yield pack_frame({"kind": "data", "o": off}, piece)
    if end:
        yield pack_frame({"kind": "end"})


def read(frames):
    return read_upload(iter(frames), S, EXPECTED, lambda h: "ctx")


def test_valid_upload_with_float64_cast_to_model_dtype():
    header, ctx, params = read(frames_for([("w", np.ones((4, 4))), ("b", np.ones(4, np.float32))]))
    assert ctx == "ctx" and params["w"].dtype == np.float32 and params["w"].sum() == 16


@pytest.mark.parametrize(
    "tensors, error, match",
    [
        ([("w", np.ones((2, 2), np.float32))], UpdateRejectedError, r"shape \(2, 2\)"),
        ([("zz", np.ones(4, np.float32))], UpdateRejectedError, "unknown tensor"),
        ([("b", np.array([1, np.nan, 0, 0], np.float32))], UpdateRejectedError, "NaN or Inf"),
        ([("b", np.array([1, np.inf, 0, 0], np.float32))], UpdateRejectedError, "NaN or Inf"),
        ([("b", np.ones(4, np.int32))], UpdateRejectedError, "dtype I32"),
        ([("b", np.ones(4, np.float64) * 1e300)], UpdateRejectedError, "NaN or Inf"),  # overflows float32
        ([("b", np.ones(4, np.float32)), ("b", np.ones(4, np.float32))], UpdateRejectedError, "sent twice"),
    ],
)
def test_invalid_tensors_rejected(tensors, error, match):
    with pytest.raises(error, match=match):
        read(frames_for(tensors))


def test_truncated_stream_and_bad_order():
    with pytest.raises(MalformedMessageError, match="without an 'end' frame"):
        read(frames_for([("b", np.ones(4, np.float32))], end=False))
    frames = list(frames_for([("w", np.ones((4, 4), np.float32))]))
    with pytest.raises(MalformedMessageError, match="out-of-order"):
        read([frames[0], frames[1], frames[3], frames[2], *frames[4:]])
    with pytest.raises(MalformedMessageError, match="params_type"):
        read(frames_for([], header={"params_type": "HALF"}))
    with pytest.raises(MalformedMessageError, match="empty upload"):
        read([])


def test_announced_size_beyond_shape_and_model_limit():
    huge = pack_frame({"kind": "tensor", "spec": ["b", "F32", [4], 10**9]})
    with pytest.raises(FrameTooLargeError, match="more than its shape allows"):
        read([pack_frame({"kind": "begin", **make_header().to_wire()}), huge])
    small = Settings(chunk_size=64, max_frame_bytes=2048, max_model_bytes=100)
    with pytest.raises(FrameTooLargeError, match="max_model_bytes=100"):
        read_upload(frames_for([("w", np.ones((4, 4), np.float32))]), small, EXPECTED, lambda h: None)


def test_header_callback_can_reject_before_any_data():
    def refuse(header):
        raise UpdateRejectedError("unknown client")

    with pytest.raises(UpdateRejectedError, match="unknown client"):
        read_upload(frames_for([("b", np.ones(4, np.float32))]), S, EXPECTED, refuse)


def test_large_tensors_stream_to_disk_and_fold_blockwise():
    """Tensors over spool_tensor_bytes never exist whole in memory: streamed to the spool file, checked
    block by block, folded block by block; the result equals the in-memory path."""
    from hpcflare.strategy import ClientUpdate, FedAvg

    big = {"w": np.arange(5000, dtype=np.float32).reshape(50, 100), "b": np.zeros(4, np.float32)}
    update = {"w": big["w"] * 0.5 + 1, "b": np.ones(4, np.float32)}
    settings = Settings(chunk_size=1024, max_frame_bytes=4096, spool_tensor_bytes=1000)
    _, _, params = read_upload(iter(frames_for(update.items())), settings, big, lambda h: None)
    assert "w" in params._spooled and "b" in params._memory  # the big one went straight to disk
    blocks = list(params.iter_blocks("w", block_bytes=4096))
    assert len(blocks) == 5 and blocks[1][0] == 1024
    streamed, in_memory = FedAvg().new_aggregator(big), FedAvg().new_aggregator(big)
    streamed.add(ClientUpdate("a", params, "FULL", 3.0))
    in_memory.add(ClientUpdate("a", {k: np.array(v) for k, v in update.items()}, "FULL", 3.0))
    np.testing.assert_array_equal(streamed.result()["w"], in_memory.result()["w"])
    params.close()
    bad = {"w": update["w"].copy(), "b": update["b"]}
    bad["w"][49, 99] = np.nan  # in the last block
    with pytest.raises(UpdateRejectedError, match="NaN or Inf"):
        read_upload(iter(frames_for(bad.items())), settings, big, lambda h: None)
    with pytest.raises(UpdateRejectedError, match="shape"):
        read_upload(iter(frames_for([("w", np.ones((100, 50), np.float32))])), settings, big, lambda h: None)


def test_in_process_arrays_are_checked_like_a_stream_and_folded_without_tensor_sized_temporaries():
    """read_arrays (a virtual client's result): the same rejections as read_upload, the caller's array held
    without a copy, and a FedAvg fold of it that needs a few MB of scratch, not a tensor's worth."""
    import tracemalloc

    from hpcflare.runtime.host.upload import read_arrays
    from hpcflare.strategy.aggregate import WeightedMeanAggregator
    from hpcflare.strategy.api import ClientUpdate, UpdateKind

    base = {"w": np.zeros(1 << 22, np.float32)}  # 16 MB
    header = make_header("site-1")
    with pytest.raises(UpdateRejectedError, match="NaN"):
        read_arrays(
            header.copy(), [("w", np.full(1 << 22, np.nan, np.float32))], Settings(), base, lambda h: None
        )
    with pytest.raises(UpdateRejectedError, match="shape"):
        read_arrays(header.copy(), [("w", np.zeros(3, np.float32))], Settings(), base, lambda h: None)
    mine = np.ones(1 << 22, np.float32)
    _, _, params = read_arrays(header.copy(), [("w", mine)], Settings(), base, lambda h: None)
    assert np.shares_memory(params["w"], mine)
    agg = WeightedMeanAggregator(base)
    tracemalloc.start()
    agg.add(ClientUpdate("site-1", params, UpdateKind.FULL, 1.0, {}, {}))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < (1 << 22) * 4 + (8 << 20)  # the accumulator (16 MB) plus a few MB, not another 16 MB
    np.testing.assert_array_equal(agg.result()["w"], mine)


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_a_large_quantized_tensor_is_dequantized_into_the_spool_never_whole_in_memory(mode):
    """The server's side of the quantize filter on a big tensor: chunks go to the upload spool as they are
    decoded (a 2 GB model's 1 GB embedding would otherwise be a second 1 GB array), then the usual checks."""
    import tracemalloc

    from hpcflare.filters.quantize import SCALE_SUFFIX, dequantize, quantize
    from hpcflare.transport.streams import upload_frames

    w = np.random.default_rng(1).normal(0, 1, 16 << 20).astype(np.float32)  # 64 MiB
    expected = {"w": np.zeros_like(w)}
    enc = quantize(w, mode, 64)
    tensors = [("w", enc[""])] + ([("w" + SCALE_SUFFIX, enc[SCALE_SUFFIX])] if SCALE_SUFFIX in enc else [])
    header = make_header(quant={"w": {"mode": mode, "block": 64}})
    frames = list(upload_frames(header, tensors, Settings()))
    tracemalloc.start()
    try:
        _, _, params = read_upload(iter(frames), Settings(), expected, lambda h: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < enc[""].nbytes + (24 << 20), peak  # the payload read back + a few chunks, not 64 MiB more
    np.testing.assert_array_equal(params["w"], dequantize(enc[""], enc.get(SCALE_SUFFIX), mode, 64, w))
    params.close()
    if mode == "fp16":  # an Inf that only shows up once decoded is refused like any other
        bad = enc[""].copy()
        bad[-1] = np.float16(np.inf)
        frames = list(upload_frames(header, [("w", bad)], Settings()))
        with pytest.raises(UpdateRejectedError, match="NaN or Inf"):
            read_upload(iter(frames), Settings(), expected, lambda h: None)
