"""bfloat16 end to end: bf16 on the wire (no fp32 upcast), fp32 accumulation, bf16 back, torch-free server."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import ClientUpdate, UpdateKind
from hpcflare.tensors import acc_dtype
from hpcflare.transport.codec import BF16, decode_tensor, encode_tensor, tensor_parts
from tests.conftest import events, load_result

torch = pytest.importorskip("torch")


def test_bf16_round_trips_bit_exactly_from_torch_and_numpy():
    t = torch.randn(257, dtype=torch.float32).to(torch.bfloat16)
    blob, tag, shape = encode_tensor("w", t)
    spec, _, _ = tensor_parts("w", t)
    assert tag == "BF16" and spec.nbytes == len(blob) and len(blob) < 257 * 2 + 128  # 2 bytes a value
    back_np = decode_tensor(blob, spec)  # the server's view: numpy, no torch needed
    assert back_np.dtype == BF16
    assert np.array_equal(back_np.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))
    back_t = decode_tensor(bytearray(blob), spec, "pytorch")
    assert back_t.dtype == torch.bfloat16 and torch.equal(back_t, t)


def test_bf16_aggregates_in_fp32_and_returns_bf16():
    assert acc_dtype(BF16) == np.float32 and acc_dtype(np.dtype(np.float16)) == np.float32
    values = np.random.default_rng(0).normal(1.0, 0.1, (1000, 4)).astype(np.float32).astype(BF16)
    agg = WeightedMeanAggregator({"w": np.zeros(4, dtype=BF16)})
    for i, value in enumerate(values):
        agg.add(ClientUpdate(f"s{i}", {"w": value}, UpdateKind.FULL, 1.0))
    out = agg.result()["w"]
    reference = values.astype(np.float64).mean(axis=0)
    assert out.dtype == BF16
    np.testing.assert_allclose(out.astype(np.float32), reference, rtol=2**-8)  # within bf16 rounding
    naive = np.zeros(4, dtype=BF16)  # what summing in bf16 would give: past 256, adding ~1 changes nothing
    for value in values:
        naive = (naive + value).astype(BF16)
    assert not np.allclose(naive.astype(np.float32) / len(values), reference, rtol=2**-8)


def test_a_bf16_tensor_is_narrowed_inside_its_fp32_sum_not_beside_it():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, (300, 70)).astype(BF16)  # 21,000 elements: several blocks of 4,096
    agg = WeightedMeanAggregator({"w": base, "n": np.arange(5, dtype=np.int32)})
    update = rng.normal(0, 1, base.shape).astype(np.float32)
    agg.add(
        ClientUpdate(
            "s", {"w": update.astype(BF16), "n": np.array([1, 2, 3, 4, 6], np.int32)}, UpdateKind.FULL, 2.0
        )
    )
    sums = {name: value for name, value in agg.partial()[0].items()}
    expected = sums["w"].astype(np.float64) / 2.0 + base.astype(np.float64)
    out = dict(agg.result_items())
    assert out["w"].dtype == BF16 and out["w"].shape == base.shape
    assert np.shares_memory(out["w"], sums["w"])  # the new bf16 tensor lives in the fp32 sum's own buffer
    assert np.array_equal(out["w"].view(np.uint16), expected.astype(np.float32).astype(BF16).view(np.uint16))
    assert out["n"].dtype == np.int32 and out["n"].tolist() == [1, 2, 3, 4, 6]


def test_narrowing_in_place_matches_astype_for_every_block_size():
    from hpcflare.tensors import narrow_in_place

    values = np.random.default_rng(2).normal(0, 100, 1001)
    for elements in (1, 7, 1000, 5000):
        for dtype in (np.float32, BF16, np.float16, np.int64):
            wide = values.copy()
            assert np.array_equal(narrow_in_place(wide, dtype, elements), values.astype(dtype))
    assert narrow_in_place(np.zeros(3, np.float32), np.float64).dtype == np.float64  # wider: a copy


BF16_CLIENT = """
import torch
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    assert all(v.dtype == torch.bfloat16 for v in model.params.values()), {k: v.dtype for k, v in model.params.items()}
    flare.send(flare.FLModel(params={k: v + 0.5 for k, v in model.params.items()}))
"""


@pytest.mark.parametrize("how", ["sim", "local-client-ranks-staging"])
def test_a_torch_bf16_model_trains_federatedly_as_bf16(make_recipe, sim_env, local_env, how):
    """Also through a client rank's partial sums (fp32 on the wire between hosts) and the staged bf16 file."""
    model = {"w": torch.full((64, 64), 1.0, dtype=torch.bfloat16), "b": torch.zeros(64, dtype=torch.bfloat16)}
    extra = {} if how == "sim" else {"clients_per_rank": 2, "staging": True}
    env = sim_env if how == "sim" else local_env
    run = make_recipe(BF16_CLIENT, model=model, n_clients=2, min_clients=2, num_rounds=2, **extra).execute(
        env
    )
    result = load_result(run.get_result(timeout=120))
    assert result["w"].dtype == BF16 and result["b"].dtype == BF16
    assert np.all(result["w"].astype(np.float32) == 2.0) and np.all(result["b"].astype(np.float32) == 1.0)
    sent = [e for e in events(run.job_dir.root, "site-1") if e["event"] == "result_sent"]
    if how == "sim":
        assert sent and all(e["bytes"] == (64 * 64 + 64) * 2 for e in sent)  # bf16 on the wire, not fp32
    else:
        assert [e["via"] for e in sent] == ["client rank", "client rank"]
        assert sent and all(e["bytes"] == (64 * 64 + 64) * 2 for e in sent)  # bf16 handed to the rank
        rank = [e["via"] for e in events(run.job_dir.root, "client-rank-1") if e["event"] == "relay_round"]
        assert rank == ["staging", "staging"]  # the staged bf16 file, read once by the rank for its sites
