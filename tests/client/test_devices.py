"""Received tensors go back to the device the script sends from (CPU until it sends GPU tensors, as in NVFlare).

The rule is checked with torch's `meta` device (a real non-CPU device that needs no hardware); the whole
route with CUDA tensors runs where a GPU is present (skipped elsewhere).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpcflare.client.api import _device_of, _on_device  # noqa: E402
from tests.conftest import HELLO_MODEL, events, load_result  # noqa: E402


def test_received_tensors_follow_the_device_the_script_sent_from():
    on_cpu = {"w": torch.ones(3), "b": np.zeros(2)}
    assert _device_of(on_cpu) is None and _on_device(on_cpu, None) is on_cpu  # CPU scripts: nothing moves
    sent = {"w": torch.ones(3).to("meta"), "n": np.zeros(1)}
    device = _device_of(sent)
    assert device == torch.device("meta")
    received = _on_device({"w": torch.ones(3), "b": np.zeros(2)}, device)
    assert received["w"].device.type == "meta" and received["w"].shape == (3,)
    assert isinstance(received["b"], np.ndarray)  # numpy arrays are not the script's tensors: left alone


CUDA_CLIENT = """
import torch
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    first = model.current_round == 0
    devices = {v.device.type for v in model.params.values()}
    assert devices == ({"cpu"} if first else {"cuda"}), devices  # after a GPU send, back on the GPU
    flare.send(flare.FLModel(params={k: v.cuda() + 1 for k, v in model.params.items()}))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_script_gets_its_model_back_on_the_gpu(make_recipe, local_env):
    model = {"numpy_key": torch.from_numpy(HELLO_MODEL.copy())}
    run = make_recipe(CUDA_CLIENT, model=model, n_clients=2, num_rounds=3).execute(local_env)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 3)
    assert all(e["event"] != "site_failed" for e in events(run.job_dir.root, "server"))
