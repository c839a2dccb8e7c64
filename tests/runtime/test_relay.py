"""Relays on real processes: partial aggregation, server traffic per relay, and relays that die."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from hpcflare.exitcodes import ExitCode
from tests.conftest import HELLO_MODEL, REPO, SLOW, events, load_result
from tests.recipes.test_hello_numpy import WEIGHTED

HELLO = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()


def server_events(run, name):
    return [e for e in events(run.job_dir.root, "server") if e["event"] == name]


def test_relays_send_one_partial_each_and_carry_the_broadcast(make_recipe, local_env):
    run = make_recipe(HELLO, n_clients=6, min_clients=6, num_rounds=2, relays=2).execute(local_env)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 2)
    assert all(code == 0 for code in run.exit_codes.values()) and len(run.exit_codes) == 9
    assert server_events(run, "result_accepted") == []  # nothing came straight from a client
    partials = server_events(run, "partial_accepted")
    assert sorted((e["round"], e["relay"]) for e in partials) == [
        (1, "relay-1"),
        (1, "relay-2"),
        (2, "relay-1"),
        (2, "relay-2"),
    ]
    assert sorted(s for e in partials if e["round"] == 1 for s in e["sites"]) == [
        f"site-{i}" for i in range(1, 7)
    ]
    model_bytes = next(
        e["bytes"] for e in events(run.job_dir.root, "site-1") if e["event"] == "model_received"
    )
    for rnd in server_events(
        run, "round_completed"
    ):  # the server streamed the model to the 2 relays, not 6 clients
        assert 2 * model_bytes <= rnd["bytes_sent"] < 3 * model_bytes
    via = {e["site"]: e["via"] for e in server_events(run, "client_registered")}
    assert sorted(via.values()) == ["relay-1"] * 3 + ["relay-2"] * 3


def test_partial_aggregation_keeps_fedavg_weights(make_recipe, local_env):
    run = make_recipe(WEIGHTED, n_clients=2, min_clients=2, relays=2).execute(local_env)
    np.testing.assert_allclose(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 3.25)


def _wait_for(run, rank, event, timeout=60):
    deadline = time.monotonic() + timeout
    while not any(e["event"] == event for e in events(run.job_dir.root, rank)):
        assert time.monotonic() < deadline, f"{rank} never logged {event}"
        time.sleep(0.1)


def test_dead_relay_clients_fail_over_to_the_server(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=4, min_clients=4, num_rounds=2, relays=2, train_args="2").execute(
        local_env
    )
    _wait_for(run, "relay-1", "relay_round")
    os.kill(run.client_pid("relay-1"), signal.SIGKILL)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 2)
    children = sorted(e["site"] for e in server_events(run, "client_registered") if e["via"] == "relay-1")
    for site in children:
        lost = [e for e in events(run.job_dir.root, site) if e["event"] == "relay_lost"]
        assert lost and "reconnecting directly" in lost[0]["msg"]
        assert run.exit_codes[site] == 0
    direct = [e["site"] for e in server_events(run, "result_accepted")]
    assert sorted(set(direct)) == children  # their results now come straight to the server
    completed = server_events(run, "round_completed")
    assert [len(e["accepted"]) for e in completed] == [4, 4]  # no round lost a client


def test_dead_relay_with_exclude_policy_drops_its_clients(make_recipe, local_env):
    run = make_recipe(
        SLOW,
        n_clients=4,
        min_clients=2,
        num_rounds=2,
        relays=2,
        relay_failover="exclude",
        train_args="2",
        settings={"heartbeat_timeout": 3},
    ).execute(local_env)
    _wait_for(run, "relay-1", "relay_round")
    os.kill(run.client_pid("relay-1"), signal.SIGKILL)
    result = load_result(run.get_result(timeout=120))
    children = sorted(e["site"] for e in server_events(run, "client_registered") if e["via"] == "relay-1")
    assert all(run.exit_codes[s] == ExitCode.SERVER_LOST for s in children)
    dead = sorted({e["site"] for e in server_events(run, "client_dead")})
    assert set(children) <= set(dead)
    last = server_events(run, "round_completed")[-1]
    assert sorted(last["accepted"]) == sorted(set(f"site-{i}" for i in range(1, 5)) - set(children))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)  # +1 per round from the survivors


def test_killed_client_behind_a_relay_is_excluded(make_recipe, local_env):
    run = make_recipe(
        SLOW,
        n_clients=4,
        min_clients=3,
        num_rounds=1,
        relays=2,
        train_args="2",
        settings={"heartbeat_timeout": 3},
    ).execute(local_env)
    _wait_for(run, "site-1", "task_received")
    os.kill(run.client_pid("site-1"), signal.SIGKILL)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 1)
    relay_dead = [e["site"] for e in events(run.job_dir.root, "relay-1") if e["event"] == "client_dead"]
    assert relay_dead == ["site-1"]
    assert sorted(server_events(run, "round_completed")[0]["accepted"]) == ["site-2", "site-3", "site-4"]


MEDIAN = """
import hpcflare.client as flare
flare.init()
add = float(flare.get_site_name().split("-")[1])  # site-i adds i
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + add for k, v in model.params.items()}))
"""


def test_non_decomposable_strategy_gets_raw_updates_forwarded(tmp_path, local_env):
    from hpcflare.recipe import FedMedianRecipe

    script = tmp_path / "median.py"
    script.write_text(MEDIAN)
    recipe = FedMedianRecipe(
        name="median",
        model={"numpy_key": HELLO_MODEL},
        min_clients=5,
        n_clients=5,
        num_rounds=1,
        train_script=script,
        relays=2,
        settings={"registration_timeout": 20, "round_timeout": 30},
    )
    run = recipe.execute(local_env)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=60))["numpy_key"], HELLO_MODEL + 3)
    assert server_events(run, "partial_accepted") == []
    assert sorted(e["site"] for e in server_events(run, "result_accepted")) == [
        f"site-{i}" for i in range(1, 6)
    ]
    forwarded = [
        e["site"]
        for r in ("relay-1", "relay-2")
        for e in events(run.job_dir.root, r)
        if e["event"] == "result_forwarded"
    ]
    assert sorted(forwarded) == [f"site-{i}" for i in range(1, 6)]
