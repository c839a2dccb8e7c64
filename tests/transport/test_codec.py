"""Wire codec: frames, metadata allowlist, per-tensor safetensors; malformed bytes give precise errors."""

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcflare.errors import FrameTooLargeError, MalformedMessageError
from hpcflare.transport import codec


def test_frame_roundtrip():
    frame = codec.pack_frame({"t": 1, "o": 4}, b"payload")
    header, payload = codec.unpack_frame(frame, 1 << 20)
    assert header == {"t": 1, "o": 4} and bytes(payload) == b"payload"


def test_oversized_frame_is_refused():
    frame = codec.pack_frame({"t": 0}, b"x" * 2000)
    with pytest.raises(FrameTooLargeError, match="max_frame_bytes=1000"):
        codec.unpack_frame(frame, 1000)


@pytest.mark.parametrize("raw", [b"", b"\x00\x00", b"\xff\xff\xff\xff garbage", b"\x00\x00\x00\x02\xc1\xc1"])
def test_malformed_frames(raw):
    with pytest.raises(MalformedMessageError):
        codec.unpack_frame(raw, 1 << 20)


def test_meta_allowlist_rejects_extension_types():
    data = msgpack.packb(msgpack.ExtType(42, b"evil"))
    with pytest.raises(MalformedMessageError, match="extension type 42"):
        codec.unpack_meta(data, expect=object)


def test_meta_converts_numpy_scalars_and_refuses_objects():
    assert codec.unpack_meta(codec.pack_meta({"loss": np.float32(0.5), "n": np.int64(3)})) == {
        "loss": 0.5,
        "n": 3,
    }
    with pytest.raises(MalformedMessageError, match="not serializable"):
        codec.pack_meta({"obj": object()})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_unpack_meta_never_crashes_on_garbage(data):
    try:
        codec.unpack_meta(data, expect=object)
    except MalformedMessageError:
        pass


def test_tensor_roundtrip_numpy_and_zero_copy_view():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    blob, dtype, shape = codec.encode_tensor("w", arr)
    assert (dtype, shape) == ("F32", (3, 4))
    spec = codec.TensorSpec("w", dtype, shape, len(blob))
    np.testing.assert_array_equal(codec.decode_tensor(blob, spec), arr)
    view = codec.view_tensor(blob, "w")
    np.testing.assert_array_equal(view, arr)
    assert not view.flags.owndata


def test_tensor_roundtrip_torch():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    blob, dtype, shape = codec.encode_tensor("w", t)
    spec = codec.TensorSpec("w", dtype, shape, len(blob))
    assert torch.equal(codec.decode_tensor(blob, spec, "pytorch"), t)
    np.testing.assert_array_equal(codec.decode_tensor(blob, spec, "numpy"), t.numpy())


def test_decode_rejects_wrong_name_shape_and_garbage():
    blob, dtype, shape = codec.encode_tensor("w", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(MalformedMessageError, match="contains"):
        codec.decode_tensor(blob, codec.TensorSpec("other", dtype, shape, len(blob)))
    with pytest.raises(MalformedMessageError, match="shape"):
        codec.decode_tensor(blob, codec.TensorSpec("w", dtype, (4,), len(blob)))
    with pytest.raises(MalformedMessageError, match="invalid for a 18-byte blob"):
        codec.decode_tensor(
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", codec.TensorSpec("w", dtype, shape, 20)
        )


@pytest.mark.parametrize(
    "header",
    [
        b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}',  # offsets beyond the shape
        b'{"w":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}}',  # unknown dtype
        b'{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}',  # negative dim
        b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',  # shifted data
    ],
)
def test_decode_rejects_inconsistent_headers(header):
    blob = len(header).to_bytes(8, "little") + header + b"\0" * 8
    with pytest.raises(MalformedMessageError):
        codec.decode_tensor(blob, codec.TensorSpec("w", "F32", (2,), len(blob)))


def test_decode_is_zero_copy_and_write_safetensors_is_readable(tmp_path):
    import safetensors.numpy

    blob, dtype, shape = codec.encode_tensor("w", np.arange(4, dtype=np.float32))
    buf = bytearray(blob)
    arr = codec.decode_tensor(buf, codec.TensorSpec("w", dtype, shape, len(buf)))
    buf[-4:] = np.float32(42).tobytes()
    assert arr[-1] == 42  # the array is a view on the received buffer
    codec.write_safetensors(
        tmp_path / "m.safetensors", {"a": np.eye(2), "b": np.arange(3, dtype=np.int8)}, metadata={"k": "v"}
    )
    loaded = safetensors.numpy.load_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded["a"], np.eye(2))
    np.testing.assert_array_equal(loaded["b"], np.arange(3, dtype=np.int8))


def test_iter_chunks_bounds_every_chunk():
    chunks = list(codec.iter_chunks(b"x" * 10, 4))
    assert [(o, len(c)) for o, c in chunks] == [(0, 4), (4, 4), (8, 2)]
    assert [(o, len(c)) for o, c in codec.iter_chunks(b"x" * 10, 4, offset=6)] == [(6, 4)]


def test_ml_dtypes_is_imported_only_when_a_bf16_tensor_appears():
    """Every rank imports the codec; ml_dtypes costs 0.5-1 s of start-up, so fp32 jobs never load it, and the
    first BF16 tensor (decoded or encoded) still round-trips as bfloat16."""
    import subprocess
    import sys

    probe = (
        "import sys, numpy as np\n"
        "import hpcflare.client, hpcflare.runtime.launch, hpcflare.runtime.server\n"
        "from hpcflare.transport import codec\n"
        "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported at start-up'\n"
        "def trip(name, x):\n"
        "    blob, tag, shape = codec.encode_tensor(name, x)\n"
        "    return tag, codec.decode_tensor(blob, codec.TensorSpec(name, tag, shape, len(blob)))\n"
        "assert trip('w', np.ones(3, np.float32))[1].dtype == np.float32 and 'ml_dtypes' not in sys.modules\n"
        "assert codec.st_tag(np.dtype('V2')) is None and not codec.is_float(np.dtype('V2'))\n"
        "import json, struct\n"
        "head = json.dumps({'b': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [0, 4]}}).encode().ljust(64)\n"
        "blob = struct.pack('<Q', len(head)) + head + np.array([0x3FC0, 0xC000], np.uint16).tobytes()\n"
        "got = codec.decode_tensor(blob, codec.TensorSpec('b', 'BF16', (2,), len(blob)))\n"
        "assert 'ml_dtypes' in sys.modules and got.astype(np.float32).tolist() == [1.5, -2.0]\n"
        "import ml_dtypes\n"
        "x = np.array([1.5, -2.0], ml_dtypes.bfloat16)\n"
        "tag, out = trip('b', x)\n"
        "assert tag == 'BF16' and out.dtype == codec.BF16 and codec.is_float(out.dtype) and (out == x).all()\n"
        "assert codec.ST_TO_NP.get('BF16') == codec.BF16 and 'BF16' in codec.ST_TO_NP\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
