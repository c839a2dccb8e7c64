"""Filters on what leaves a site: quantization round-trip bounds, DP clipping/noise, exclusion, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.errors import ConfigError, UpdateRejectedError
from hpcflare.filters import GaussianDP, Outgoing, apply_filters, build_filters
from hpcflare.filters.quantize import (
    SCALE_SUFFIX,
    Quantize,
    check_quant_map,
    dequantize,
    quantize,
    wire_shapes,
)

RNG = np.random.default_rng(0)
W = (RNG.normal(0, 1, size=(37, 29)) * np.linspace(0.01, 3, 29)).astype(np.float32)  # odd sizes: padding


@pytest.mark.parametrize(
    "mode, bytes_per_value, bound",
    [
        ("fp16", 2, lambda w, b: np.abs(w) * 2.0**-11 + 1e-7),
        ("bf16", 2, lambda w, b: np.abs(w) * 2.0**-8),
        ("int8", 1, lambda w, b: b / 127 / 2 + 1e-7),
        ("int4", 0.5, lambda w, b: b / 7 / 2 + 1e-6),
    ],
)
def test_round_trip_error_within_half_a_step(mode, bytes_per_value, bound):
    block = 64
    encoded = quantize(W, mode, block)
    for suffix, (shape, dtype) in wire_shapes(W, mode, block).items():
        assert encoded[suffix].shape == shape and encoded[suffix].dtype == dtype
    payload = encoded[""].nbytes
    assert payload == pytest.approx(W.size * bytes_per_value, abs=1)
    back = dequantize(encoded[""], encoded.get(SCALE_SUFFIX), mode, block, W)
    assert back.dtype == W.dtype and back.shape == W.shape
    flat = np.zeros(-(-W.size // block) * block, np.float32)
    flat[: W.size] = W.reshape(-1)
    absmax = np.repeat(np.abs(flat.reshape(-1, block)).max(axis=1), block)[: W.size].reshape(W.shape)
    assert np.all(np.abs(back - W) <= bound(W, absmax))


@pytest.mark.parametrize("mode", ["fp16", "bf16", "int8", "int4"])
def test_tensors_across_chunk_boundaries_match_a_per_block_reference(mode):
    """Sizes just around the chunk size (and odd, for int4's pairs): each block's scale and values are what a
    one-shot computation over the whole tensor gives."""
    from hpcflare.filters.quantize import CHUNK_VALUES, LEVELS

    for size in (CHUNK_VALUES - 1, CHUNK_VALUES + 3, 2 * CHUNK_VALUES + 101):
        w = RNG.normal(0, 2, size=size).astype(np.float32)
        enc = quantize(w, mode, 100)
        if mode in ("int8", "int4"):
            blocks = np.zeros(-(-size // 100) * 100, np.float32)
            blocks[:size] = w
            np.testing.assert_array_equal(
                enc[SCALE_SUFFIX], np.abs(blocks.reshape(-1, 100)).max(axis=1) / LEVELS[mode]
            )
        back = dequantize(enc[""], enc.get(SCALE_SUFFIX), mode, 100, w)
        step = {"fp16": 2e-3, "bf16": 8e-3}.get(mode, 0)
        bound = np.abs(w) * step + 1e-6 if step else np.repeat(enc[SCALE_SUFFIX], 100)[:size] / 2 + 1e-6
        assert np.all(np.abs(back - w) <= bound)


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_quantizing_a_large_tensor_needs_no_tensor_sized_temporaries(mode):
    """A 64 MB float32 tensor: beyond the encoded output (and the decoded result), the peak of numpy's traced
    allocations stays at a few chunks, not several copies of the tensor."""
    import tracemalloc

    w = np.ones(16 << 20, np.float32)
    tracemalloc.start()
    try:
        enc = quantize(w, mode, 64)
        out_bytes = sum(v.nbytes for v in enc.values())
        _, peak = tracemalloc.get_traced_memory()
        assert peak - out_bytes < 32 << 20, (peak, out_bytes)
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        back = dequantize(enc[""], enc.get(SCALE_SUFFIX), mode, 64, w)
        _, peak = tracemalloc.get_traced_memory()
        assert peak - base - back.nbytes < 32 << 20, (peak - base, back.nbytes)
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(back, w)


def test_int_quantization_of_zeros_and_scales():
    zeros = np.zeros(100, np.float32)
    for mode in ("int8", "int4"):
        enc = quantize(zeros, mode, 32)
        np.testing.assert_array_equal(dequantize(enc[""], enc[SCALE_SUFFIX], mode, 32, zeros), zeros)
    enc = quantize(np.array([1.0, -0.5, 0.25, 0.0], np.float32), "int8", 8)
    np.testing.assert_allclose(enc[SCALE_SUFFIX], [1 / 127])
    np.testing.assert_array_equal(enc[""], [127, -64, 32, 0])  # -63.5 rounds to even


def test_quantize_filter_leaves_int_tensors_alone():
    out = Quantize("int8", 16).apply(Outgoing({"w": W, "n": np.array([3], np.int64)}, "FULL"))
    assert set(out.params) == {"w", "w" + SCALE_SUFFIX, "n"} and out.quant == {
        "w": {"mode": "int8", "block": 16}
    }


def test_dp_clips_to_the_bound_and_turns_full_into_diff():
    g = {"a": np.zeros(3, np.float32), "b": np.ones(1, np.float32)}
    update = {"a": np.array([3.0, 0.0, 0.0], np.float32), "b": np.array([5.0], np.float32)}  # diff norm 5
    out = GaussianDP(clip=1.0, noise_multiplier=0.0).apply(Outgoing(dict(update), "FULL", g))
    assert out.params_type == "DIFF"
    np.testing.assert_allclose(out.params["a"], [0.6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out.params["b"], [0.8], rtol=1e-6)
    small = GaussianDP(clip=10.0, noise_multiplier=0.0).apply(Outgoing(dict(update), "FULL", g))
    np.testing.assert_allclose(small.params["a"], [3, 0, 0])  # under the bound: unchanged


def test_dp_noise_has_the_calibrated_spread():
    dp = GaussianDP(clip=0.5, noise_multiplier=2.0, seed=1)
    out = dp.apply(Outgoing({"w": np.zeros(200_000, np.float32)}, "DIFF"))
    assert np.std(out.params["w"]) == pytest.approx(1.0, rel=0.02)  # sigma = 2.0 * 0.5


def test_filter_chain_and_config_errors():
    filters = build_filters([{"type": "exclude", "names": ["head.*"]}, {"type": "quantize", "mode": "fp16"}])
    out = apply_filters(filters, {"head.w": W, "body.w": W}, "FULL", None)
    assert set(out.params) == {"body.w"} and out.params["body.w"].dtype == np.float16
    assert set(
        apply_filters(filters, {"body.w": W}, "FULL", None, quantize=False).params["body.w"].dtype.str
    ) == set(np.dtype(np.float32).str)
    for bad, match in [
        ([{"type": "zip"}], "one of"),
        ([{"type": "quantize", "mode": "int3"}], "mode"),
        ([{"type": "quantize", "mode": "int8"}, {"type": "exclude", "names": ["x"]}], "last"),
        ([{"type": "dp_gaussian", "clip": 0, "noise_multiplier": 1}], "clip > 0"),
        ([{"type": "exclude"}], "names"),
        ("nope", "must be a list"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_filters(bad)


@pytest.mark.parametrize(
    "quant",
    [
        {"w": {"mode": "int8", "block": 3}},
        {"w": {"mode": "zip", "block": 64}},
        {"nope": {"mode": "int8", "block": 64}},
        ["w"],
        {"n": {"mode": "fp16", "block": 64}},
    ],
)
def test_untrusted_quant_maps_are_refused(quant):
    with pytest.raises(UpdateRejectedError):
        check_quant_map(quant, {"w": W, "n": np.array([1], np.int64)})
