"""Start-up grace by liveness: a site whose process is alive but still importing when registration_timeout
passes is waited for (its client rank's beacon keeps changing), up to startup_timeout; a silent one is not."""

from __future__ import annotations

import time

import numpy as np

from hpcflare.runtime.cluster.beacon import BeaconWatch, StartupBeacon
from tests.conftest import HELLO_MODEL, events, load_result

SLOW_IMPORT = """
import os, sys, time
if os.environ.get("HPCFLARE_SITE_NAME") == "site-2":
    time.sleep(float(sys.argv[1]))  # a torch/Lightning import from a shared filesystem on a loaded node
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def test_a_site_still_importing_after_registration_timeout_takes_part(make_recipe, local_env):
    run = make_recipe(
        SLOW_IMPORT,
        n_clients=2,
        min_clients=1,
        num_rounds=2,
        train_args="8",
        settings={"registration_timeout": 3},
    ).execute(local_env)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 2)
    server = events(run.job_dir.root, "server")
    waiting = [e for e in server if e["event"] == "sites_starting"]
    assert waiting and waiting[0]["sites"] == ["site-2"]
    assert not [e for e in server if e["event"] == "clients_excluded"]  # nobody was left out
    done = next(e for e in server if e["event"] == "registration_done")
    assert done["clients"] == ["site-1", "site-2"]


def test_startup_timeout_bounds_the_wait_for_a_live_site(make_recipe, local_env):
    t0 = time.monotonic()
    run = make_recipe(
        SLOW_IMPORT,
        n_clients=2,
        min_clients=1,
        num_rounds=1,
        train_args="30",
        settings={"registration_timeout": 2, "startup_timeout": 6},
    ).execute(local_env)
    load_result(run.get_result(timeout=120))
    excluded = [e for e in events(run.job_dir.root, "server") if e["event"] == "clients_excluded"]
    assert excluded and excluded[0]["missing"] == ["site-2"]
    started = next(e for e in events(run.job_dir.root, "server") if e["event"] == "round_started")
    assert started["clients"] == ["site-1"] and time.monotonic() - t0 < 60


def test_a_beacon_is_alive_only_while_it_changes(tmp_path):
    watch = BeaconWatch(tmp_path, fresh_for=0.6)
    left_behind = StartupBeacon(tmp_path, "client-rank-9", ["site-9"], interval=60).start()  # touched no more
    assert watch.alive() == set()  # first sight proves nothing: a dead process's file looks the same
    with StartupBeacon(tmp_path, "client-rank-1", ["site-1", "site-2"], interval=0.1):
        time.sleep(0.3)
        watch.alive()
        time.sleep(0.3)
        assert watch.alive() == {"site-1", "site-2"}
    time.sleep(0.7)
    assert watch.alive() == set()  # stopped (file removed), and the one left behind never changed
    left_behind.stop()
