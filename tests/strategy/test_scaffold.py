"""SCAFFOLD: server update of weights and control variates by hand; the client helper's option-II update."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.strategy import ClientUpdate, Scaffold
from hpcflare.strategy.scaffold import CONTROL_PREFIX

C = CONTROL_PREFIX


def test_initial_params_add_zero_controls_for_float_tensors_only():
    params = Scaffold(num_clients=2).initial_params(
        {"w": np.ones(3, np.float32), "n": np.array([1], np.int64)}
    )
    assert sorted(params) == ["n", C + "w", "w"]
    np.testing.assert_array_equal(params[C + "w"], np.zeros(3, np.float32))


def test_weights_by_fedavg_controls_by_participation():
    strategy = Scaffold(num_clients=4)
    g = strategy.initial_params({"w": np.array([1.0, 1.0], np.float32)})
    agg = strategy.new_aggregator(g)
    agg.add(
        ClientUpdate(
            "a",
            {"w": np.array([3.0, 1.0], np.float32), C + "w": np.array([1.0, 0.0], np.float32)},
            "FULL",
            1.0,
        )
    )
    agg.add(
        ClientUpdate(
            "b",
            {"w": np.array([1.0, 5.0], np.float32), C + "w": np.array([3.0, 2.0], np.float32)},
            "FULL",
            3.0,
        )
    )
    assert agg.count == 2
    out = agg.result()
    # x: weighted mean of deltas (2,0)*1 and (0,4)*3 over 4 -> (0.5, 3)
    np.testing.assert_allclose(out["w"], [1.5, 4.0])
    # c: unweighted mean of delta c (2, 1) times |S|/N = 2/4
    np.testing.assert_allclose(out[C + "w"], [1.0, 0.5])
    assert sorted(out) == [C + "w", "w"]  # the model and its control variate, nothing else


def test_relay_partials_match_direct():
    strategy = Scaffold(num_clients=3)
    g = strategy.initial_params({"w": np.zeros(2, np.float32)})
    ups = [
        ClientUpdate(
            s, {"w": np.full(2, i, np.float32), C + "w": np.full(2, -i, np.float32)}, "DIFF", float(i)
        )
        for i, s in enumerate(("a", "b", "c"), 1)
    ]
    direct = strategy.new_aggregator(g)
    for u in ups:
        direct.add(u)
    relay, server = strategy.new_aggregator(g), strategy.new_aggregator(g)
    relay.add(ups[0])
    relay.add(ups[1])
    server.add(ups[2])
    sums, weights = relay.partial()
    server.add_partial(sums, weights, relay.count)
    expected = direct.result()
    for name, value in server.result().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6)


def test_client_helper_option_two_update():
    torch = pytest.importorskip("torch")
    from hpcflare.client.scaffold import ScaffoldClient

    net = torch.nn.Linear(1, 1, bias=False)
    helper = ScaffoldClient()
    params = {"weight": torch.tensor([[2.0]]), C + "weight": torch.tensor([[0.5]])}
    net.load_state_dict(helper.receive(params))
    assert torch.equal(helper.c_local["weight"], torch.zeros(1, 1))
    net.weight.grad = torch.tensor([[1.0]])
    helper.correct(net)  # grad += c - c_i = 0.5
    assert net.weight.grad.item() == pytest.approx(1.5)
    with torch.no_grad():
        net.weight.sub_(0.1 * 4)  # as if 4 steps at lr 0.1 moved it by -0.4 in total
    deltas = helper.finish(net, steps=4, lr=0.1)
    # c_i+ = 0 - 0.5 + (2.0 - 1.6) / (4 * 0.1) = 0.5
    assert deltas[C + "weight"].item() == pytest.approx(0.5)
    assert helper.c_local["weight"].item() == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="strategy 'scaffold'"):
        helper.receive({"weight": torch.tensor([[1.0]])})


def test_fedprox_term_by_hand():
    torch = pytest.importorskip("torch")
    from hpcflare.client.fedprox import ProximalTerm

    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
    prox = ProximalTerm(mu=0.5)
    prox.set_global(net)
    with torch.no_grad():
        net.weight.add_(torch.tensor([[1.0, -2.0]]))
    assert prox(net).item() == pytest.approx(0.25 * (1 + 4))
