"""Upload validation: every malformed or invalid upload is refused with a precise reason."""

import numpy as np
import pytest

from hpcflare.errors import FrameTooLargeError, MalformedMessageError, UpdateRejectedError
from hpcflare.runtime.upload import read_upload
from hpcflare.settings import Settings
from hpcflare.transport.codec import TensorSpec, encode_tensor, iter_chunks, pack_frame

S = Settings(chunk_size=64, max_frame_bytes=2048)
EXPECTED = {"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)}


def frames_for(tensors, header=None, end=True):
    yield pack_frame({"kind": "begin", "params_type": "FULL", **(header or {})})
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


@pytest.mark.parametrize("tensors, error, match", [
    ([("w", np.ones((2, 2), np.float32))], UpdateRejectedError, r"shape \(2, 2\)"),
    ([("zz", np.ones(4, np.float32))], UpdateRejectedError, "unknown tensor"),
    ([("b", np.array([1, np.nan, 0, 0], np.float32))], UpdateRejectedError, "NaN or Inf"),
    ([("b", np.array([1, np.inf, 0, 0], np.float32))], UpdateRejectedError, "NaN or Inf"),
    ([("b", np.ones(4, np.int32))], UpdateRejectedError, "dtype I32"),
    ([("b", np.ones(4, np.float64) * 1e300)], UpdateRejectedError, "NaN or Inf"),  # overflows float32
    ([("b", np.ones(4, np.float32)), ("b", np.ones(4, np.float32))], UpdateRejectedError, "sent twice"),
])
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
    huge = pack_frame({"kind": "tensor", "spec": ["b", "F32", [4], 10 ** 9]})
    with pytest.raises(FrameTooLargeError, match="more than its shape allows"):
        read([pack_frame({"kind": "begin", "params_type": "FULL"}), huge])
    small = Settings(chunk_size=64, max_frame_bytes=2048, max_model_bytes=100)
    with pytest.raises(FrameTooLargeError, match="max_model_bytes=100"):
        read_upload(frames_for([("w", np.ones((4, 4), np.float32))]), small, EXPECTED, lambda h: None)


def test_header_callback_can_reject_before_any_data():
    def refuse(header):
        raise UpdateRejectedError("unknown client")

    with pytest.raises(UpdateRejectedError, match="unknown client"):
        read_upload(frames_for([("b", np.ones(4, np.float32))]), S, EXPECTED, refuse)
