"""An NVFlare-style PyTorch client: torch tensors in receive(), state_dict out, FedAvg over real processes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import load_result  # noqa: E402

SCRIPT = """
import torch
import hpcflare.client as flare

flare.init()
net = torch.nn.Linear(3, 2)
while flare.is_running():
    input_model = flare.receive()
    assert all(isinstance(v, torch.Tensor) for v in input_model.params.values())
    net.load_state_dict(input_model.params)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0 if flare.get_site_name() == "site-1" else 3.0)
    flare.send(flare.FLModel(params=net.state_dict(), metrics={"loss": torch.tensor(0.5)},
                             meta={"NUM_STEPS_CURRENT_ROUND": 10}))
"""


def test_torch_module_fedavg(make_recipe, local_env):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    recipe = make_recipe(SCRIPT, model=model, num_rounds=2, settings={"registration_timeout": 60})
    run = recipe.execute(local_env)
    result = load_result(run.get_result(timeout=180))
    assert run.job_dir.load_config().framework == "pytorch"
    np.testing.assert_allclose(result["weight"], model.weight.detach().numpy() + 4.0, rtol=1e-6)
    np.testing.assert_allclose(result["bias"], model.bias.detach().numpy() + 4.0, rtol=1e-6)
