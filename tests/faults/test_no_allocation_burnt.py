"""No allocation burnt: a site that registers after the job started without it, or that comes back after
being declared dead, is told the job goes on without it and exits 0 at once (its Slurm task COMPLETED)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from tests.conftest import FAST, HELLO_MODEL, events, load_result, wait_for_event

SCRIPT = """
import os, sys, time
import hpcflare.client as flare
if os.environ.get("HPCFLARE_SITE_NAME") == "site-3" and sys.argv[1] == "late":
    time.sleep(6)  # registers after registration_timeout: the job started without it
flare.init()
while flare.is_running():
    if os.environ.get("HPCFLARE_SITE_NAME") == "site-3" and sys.argv[1] == "dead":
        time.sleep(2)  # stopped here by the test: the model is fetched only after the round closed without it
    model = flare.receive()
    time.sleep(1.5)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def _ended_reason(run, site):
    ended = [e for e in events(run.job_dir.root, site) if e["event"] == "job_ended"]
    return ended[0]["msg"] if ended else ""


def test_late_registrant_is_told_and_exits_0(make_recipe, local_env):
    run = make_recipe(
        SCRIPT,
        n_clients=3,
        min_clients=2,
        num_rounds=4,
        train_args="late",
        # no start-up grace beyond registration_timeout: site-3 is alive but registers after the job started
        settings={"registration_timeout": 3, "startup_timeout": 3},
    ).execute(local_env)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 4)
    assert run.exit_codes["site-3"] == 0
    assert "continues without site-3" in _ended_reason(run, "site-3")
    assert any(e["event"] == "late_registrant" for e in events(run.job_dir.root, "server"))


def test_site_declared_dead_then_resumed_ends_cleanly(make_recipe, local_env):
    run = make_recipe(SCRIPT, n_clients=3, min_clients=2, num_rounds=4, train_args="dead").execute(local_env)
    wait_for_event(run.job_dir.root, "site-3", "task_received")
    pid = run.client_pid("site-3")
    os.kill(pid, signal.SIGSTOP)
    wait_for_event(run.job_dir.root, "server", "client_dead", timeout=FAST["heartbeat_timeout"] + 30)
    os.kill(pid, signal.SIGCONT)
    t0 = time.monotonic()
    load_result(run.get_result(timeout=120))
    assert run.exit_codes["site-3"] == 0
    assert "continues without site-3" in _ended_reason(run, "site-3")
    assert time.monotonic() - t0 < 60
    stale = [e for e in events(run.job_dir.root, "site-3") if e["event"] == "task_stale"]
    assert stale and "no longer current" in stale[0]["msg"]  # its script was not failed by the closed round
