"""FedOpt's server optimizers against hand-computed values; state survives a checkpoint/resume."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.errors import ConfigError
from hpcflare.strategy import ClientUpdate, FedOpt

G = {"w": np.array([1.0, -2.0], dtype=np.float32), "n": np.array([4], dtype=np.int64)}


def run_round(strategy: FedOpt, global_params, *updates):
    aggregator = strategy.new_aggregator(global_params)
    for u in updates:
        aggregator.add(u)
    return aggregator.result()


def test_sgd_lr1_without_momentum_is_fedavg():
    out = run_round(
        FedOpt("sgd", lr=1.0, momentum=0.0),
        G,
        ClientUpdate("a", {"w": np.array([3.0, 0.0], np.float32)}, "FULL", 1.0),
        ClientUpdate("b", {"w": np.array([1.0, 2.0], np.float32)}, "DIFF", 1.0),
    )
    np.testing.assert_allclose(out["w"], [1 + (2 + 1) / 2, -2 + (2 + 2) / 2])


def test_sgd_momentum_over_two_rounds():
    opt = FedOpt("sgd", lr=0.5, momentum=0.9)
    # round 1: mean delta (1, -1) -> g = (-1, 1); m = g; w = w - 0.5 m
    r1 = run_round(opt, G, ClientUpdate("a", {"w": np.array([1.0, -1.0], np.float32)}, "DIFF", 1.0))
    np.testing.assert_allclose(r1["w"], [1.5, -2.5])
    # round 2: same delta -> m = 0.9 m + g = 1.9 g; w = w - 0.5 * 1.9 g
    r2 = run_round(opt, r1, ClientUpdate("a", {"w": np.array([1.0, -1.0], np.float32)}, "DIFF", 1.0))
    np.testing.assert_allclose(r2["w"], [1.5 + 0.95, -2.5 - 0.95], rtol=1e-6)
    assert r2["n"].dtype == np.int64 and r2["n"][0] == 4  # integer tensors untouched by the optimizer


def test_adam_step_by_hand():
    opt = FedOpt("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    out = run_round(
        opt,
        G,
        ClientUpdate("a", {"w": np.array([0.5, 0.0], np.float32)}, "DIFF", 1.0),
        ClientUpdate("b", {"w": np.array([1.5, 2.0], np.float32)}, "DIFF", 3.0),
    )
    delta = np.array([(0.5 + 4.5) / 4, (0 + 6) / 4])  # weighted mean (1.25, 1.5)
    g = -delta
    m, v = 0.1 * g, 0.01 * g**2
    np.testing.assert_allclose(out["w"], G["w"] - 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    state = opt.state_dict()
    np.testing.assert_allclose(state["m.w"], m, rtol=1e-6)
    np.testing.assert_allclose(state["v.w"], v, rtol=1e-6)
    resumed = FedOpt("adam", lr=0.1)
    resumed.load_state_dict(state)
    same = ClientUpdate("a", {"w": np.array([1.0, 1.0], np.float32)}, "DIFF", 1.0)
    np.testing.assert_allclose(run_round(resumed, out, same)["w"], run_round(opt, out, same)["w"])


def test_relay_partials_give_the_same_step():
    direct, via_relays = FedOpt("adam", lr=0.1), FedOpt("adam", lr=0.1)
    ups = [ClientUpdate(f"s{i}", {"w": np.array([i, -i], np.float32)}, "DIFF", float(i)) for i in (1, 2, 3)]
    expected = run_round(direct, G, *ups)
    relay_a, relay_b = via_relays.new_aggregator(G), via_relays.new_aggregator(G)
    relay_a.add(ups[0])
    relay_b.add(ups[1])
    relay_b.add(ups[2])
    server = via_relays.new_aggregator(G)
    for relay in (relay_a, relay_b):
        sums, weights = relay.partial()
        server.add_partial(sums, weights, relay.count)
    np.testing.assert_allclose(server.result()["w"], expected["w"], rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{"optimizer": "rmsprop"}, {"lr": 0}, {"momentum": 1.0}])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        FedOpt(**kwargs)
