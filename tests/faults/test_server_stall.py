"""A paused server does not kill its clients: SIGSTOP the server for twice heartbeat_timeout mid-round,
SIGCONT it, and the job completes with nobody declared dead; diagnose names the stall."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from hpcflare.job import JobDir
from hpcflare.logs.diagnose import diagnose
from tests.conftest import FAST, HELLO_MODEL, SLOW, events, load_result, wait_for_event


def test_server_stopped_twice_heartbeat_timeout_loses_nobody(make_recipe, local_env):
    stall = 2 * FAST["heartbeat_timeout"] + 0.5
    recipe = make_recipe(
        SLOW, n_clients=2, num_rounds=2, train_args="2", settings={"server_lost_timeout": stall + 10}
    )
    run = recipe.execute(local_env)
    wait_for_event(run.job_dir.root, "server", "round_started")
    os.kill(run.server.pid, signal.SIGSTOP)
    time.sleep(stall)
    os.kill(run.server.pid, signal.SIGCONT)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)
    server = events(run.job_dir.root, "server")
    assert not [e for e in server if e["event"] == "client_dead"]
    stalls = [e for e in server if e["event"] == "host_stalled"]
    assert stalls and max(e["seconds"] for e in stalls) >= stall - 0.5
    findings, _ = diagnose(JobDir(run.job_dir.root))
    assert any("server was stopped for" in f.what for f in findings)
