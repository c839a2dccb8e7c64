"""A paused relay does not kill its children: SIGSTOP a relay for twice heartbeat_timeout mid-round, SIGCONT it,
and the job completes with none of its children declared dead; the server names the relay's stall."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from tests.conftest import FAST, HELLO_MODEL, SLOW, events, load_result, wait_for_event


def test_relay_stopped_twice_heartbeat_timeout_loses_none_of_its_children(make_recipe, local_env):
    stall = 2 * FAST["heartbeat_timeout"] + 0.5
    recipe = make_recipe(
        SLOW,
        n_clients=2,
        num_rounds=2,
        train_args="2",
        relays=1,
        settings={"server_lost_timeout": stall + 10, "rpc_timeout": stall + 10},
    )
    run = recipe.execute(local_env)
    wait_for_event(run.job_dir.root, "server", "round_started")
    relay = run.clients["relay-1"]
    os.kill(relay.pid, signal.SIGSTOP)
    time.sleep(stall)
    os.kill(relay.pid, signal.SIGCONT)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)
    server = events(run.job_dir.root, "server")
    assert not [e for e in server if e["event"] == "client_dead"], [
        e["msg"] for e in server if e["event"] == "client_dead"
    ]
    stalls = [e for e in server if e["event"] == "host_stalled" and e.get("host") == "relay-1"]
    assert len(stalls) == 1 and stalls[0]["seconds"] >= stall - 1.5
