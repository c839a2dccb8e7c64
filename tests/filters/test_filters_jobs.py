"""Filters in real jobs: quantized updates are dequantized before aggregation; excluded tensors keep their
global value; the bytes on the wire shrink as promised."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import events, load_result

MODEL = {"body": np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64), "head": np.ones(8, np.float32)}
SCRIPT = """
import hpcflare.client as flare
flare.init()
bump = 0.01 * int(flare.get_site_name().split("-")[1])
while flare.is_running():
    m = flare.receive()
    flare.send(flare.FLModel(params={k: v + bump for k, v in m.params.items()}))
"""


@pytest.mark.parametrize("mode, ratio", [("int8", 0.25), ("int4", 0.125), ("bf16", 0.5)])
def test_quantized_and_excluded_updates(make_recipe, local_env, mode, ratio):
    filters = [{"type": "exclude", "names": ["head"]}, {"type": "quantize", "mode": mode, "block": 64}]
    run = make_recipe(SCRIPT, model=MODEL, n_clients=2, num_rounds=2, filters=filters).execute(local_env)
    result = load_result(run.get_result(timeout=90))
    np.testing.assert_array_equal(result["head"], MODEL["head"])  # never left the sites
    expected = MODEL["body"] + 2 * 0.015
    step = {"int8": 1.1 / 127, "int4": 1.1 / 7, "bf16": 2.2 * 2**-8}[
        mode
    ]  # 2 rounds x half a step; absmax <= 1.03
    assert np.max(np.abs(result["body"] - expected)) <= step  # two rounds of half-step errors
    sent = [e for e in events(run.job_dir.root, "site-1") if e["event"] == "result_sent"]
    assert sent and all(e["quant"] == [mode] for e in sent)
    assert sent[0]["bytes"] <= MODEL["body"].nbytes * ratio * 1.1 + 64 * 4


def test_dp_job_clips_every_update(make_recipe, local_env):
    filters = [{"type": "dp_gaussian", "clip": 0.1, "noise_multiplier": 0.0}]
    run = make_recipe(
        SCRIPT, model={"body": np.zeros(100, np.float32)}, n_clients=2, num_rounds=1, filters=filters
    ).execute(local_env)
    result = load_result(run.get_result(timeout=90))["body"]
    # each site's update (0.01 or 0.02 everywhere, norm 0.1 or 0.2) is clipped to norm 0.1 -> 0.01 per value
    np.testing.assert_allclose(result, np.full(100, 0.01), rtol=1e-5)
