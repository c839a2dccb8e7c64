"""Fault injection on real processes: a server restart, clients that never start, a stalled upload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hpcflare.errors import JobFailedError
from hpcflare.exitcodes import ExitCode
from tests.conftest import HELLO_MODEL, events, load_result

SCRIPT = """
import sys, time
import numpy as np
import hpcflare.client as flare
mode = sys.argv[1]
site = __import__("os").environ.get("HPCFLARE_SITE_NAME")
if site == "site-3" and mode == "crash_at_start":
    sys.exit(3)
if site == "site-3" and mode == "hang_at_start":
    time.sleep(3600)
flare.init()


class Stalling(dict):
    def items(self):
        for i, kv in enumerate(super().items()):
            if i == 1:
                time.sleep(3600)  # the upload stream stops after its first tensor
            yield kv


while flare.is_running():
    model = flare.receive()
    params = {k: v + 1 for k, v in model.params.items()}
    if mode == "slow":
        time.sleep(1.5)
    if site == "site-3" and mode == "stall_upload":
        params = Stalling(params)
    flare.send(flare.FLModel(params=params))
"""


def server_events(job_dir, name):
    return [e for e in events(job_dir, "server") if e["event"] == name]


def _restart_server_after_first_checkpoint(run, pause: float = 0.0) -> None:
    """SIGKILL the server once round 1 is checkpointed, start a new one on the job dir ``pause`` seconds later,
    wait for the job."""
    checkpoint = run.job_dir.models_dir / "checkpoint.json"
    deadline = time.monotonic() + 60
    while not checkpoint.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(run.server.pid, signal.SIGKILL)
    run.server.wait()
    time.sleep(pause)
    restarted = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpcflare.runtime.launch",
            "--job-dir",
            str(run.job_dir.root),
            "--role",
            "server",
            "--quiet",
        ]
    )
    assert restarted.wait(timeout=120) == 0
    run.wait(timeout=60)


def test_server_restart_mid_job_resumes_from_checkpoint(make_recipe, local_env):
    run = make_recipe(
        SCRIPT,
        n_clients=2,
        min_clients=2,
        num_rounds=3,
        train_args="slow",
        settings={"server_lost_timeout": 30},
    ).execute(local_env)
    _restart_server_after_first_checkpoint(run)
    np.testing.assert_array_equal(load_result(run.job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 3)
    root = run.job_dir.root
    assert len(server_events(root, "resumed")) == 1
    assert sorted({e["round"] for e in server_events(root, "round_completed")}) == [1, 2, 3]
    for site in ("site-1", "site-2"):
        assert any(e["event"] == "server_moved" for e in events(root, site)), site
        assert run.exit_codes[site] == 0


def test_client_that_never_starts_is_excluded_after_the_grace(make_recipe, local_env):
    for mode in ("crash_at_start", "hang_at_start"):
        run = make_recipe(
            SCRIPT,
            n_clients=3,
            min_clients=2,
            num_rounds=1,
            train_args=mode,
            # hang_at_start is alive (its beacon changes): waited for past registration_timeout, up to startup_timeout
            settings={"registration_timeout": 4, "startup_timeout": 6},
        ).execute(local_env)
        np.testing.assert_array_equal(load_result(run.get_result(timeout=60))["numpy_key"], HELLO_MODEL + 1)
        if mode == "hang_at_start":  # never registered: excluded once the startup grace is over
            excluded = server_events(run.job_dir.root, "clients_excluded")
            assert excluded and excluded[0]["never_registered"] == ["site-3"]
        else:  # died before flare.init(): the launcher tells the server why, nobody waits for it
            failed = [e for e in server_events(run.job_dir.root, "client_failed") if e["site"] == "site-3"]
            assert failed and "exited with status 3" in failed[0]["reason"]
        completed = server_events(run.job_dir.root, "round_completed")
        assert sorted(completed[0]["accepted"]) == ["site-1", "site-2"]
        run.abort()


@pytest.mark.parametrize(
    "mode, code, words",
    [
        (
            "hang_at_start",
            {ExitCode.REGISTRATION_TIMEOUT},
            ["never registered: ['site-3']", "registration_timeout=4s", "startup_timeout=6s for ['site-3']"],
        ),
        # depending on timing the failure is known during registration or when round 1 starts
        (
            "crash_at_start",
            {ExitCode.REGISTRATION_TIMEOUT, ExitCode.ROUND_FAILED},
            ["site-3", "exited with status 3"],
        ),
    ],
)
def test_too_many_missing_clients_fail_fast_naming_them(make_recipe, local_env, mode, code, words):
    run = make_recipe(
        SCRIPT,
        n_clients=3,
        min_clients=3,
        train_args=mode,
        settings={"registration_timeout": 4, "startup_timeout": 6},
    ).execute(local_env)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        run.get_result(timeout=60)
    for word in words:
        assert word in str(info.value)
    assert time.monotonic() - t0 < 20
    assert run.exit_codes["server"] in code
    run.abort()


def test_stalled_upload_is_cut_and_round_goes_on(make_recipe, local_env):
    model = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    run = make_recipe(
        SCRIPT,
        model=model,
        n_clients=3,
        min_clients=2,
        num_rounds=1,
        train_args="stall_upload",
        settings={"stream_idle_timeout": 2, "round_timeout": 60, "shared_memory": False},
    ).execute(local_env)  # a real stream to stall
    result = load_result(run.get_result(timeout=60))
    np.testing.assert_array_equal(result["a"], np.full(3, 2.0))
    # whichever side's idle watchdog fires first cuts the stream; both name the setting
    stalls = server_events(run.job_dir.root, "transfer_stalled")
    site3 = (run.job_dir.log_dir / "site-3.log").read_text()
    assert (stalls and "stream_idle_timeout" in stalls[0]["msg"]) or "stream_idle_timeout" in site3
    assert run.exit_codes["site-3"] == ExitCode.TRANSPORT_ERROR
    assert sorted(server_events(run.job_dir.root, "round_completed")[0]["accepted"]) == ["site-1", "site-2"]


@pytest.mark.parametrize("hosts", [{"relays": 1}, {"clients_per_rank": 2}])
@pytest.mark.parametrize("pause", [0.0, 3.0])
def test_server_restart_behind_relays_and_client_ranks(make_recipe, local_env, hosts, pause):
    """The restarted server has no record of the sites behind a host: the host registers them again under the
    tokens they hold, and the job resumes. With a pause longer than the script's round, the host's partial
    upload meets no server: it is retried until the new server is up, which has no such round (discarded)."""
    run = make_recipe(
        SCRIPT,
        n_clients=2,
        min_clients=2,
        num_rounds=3,
        train_args="slow",
        settings={"server_lost_timeout": 30},
        **hosts,
    ).execute(local_env)
    _restart_server_after_first_checkpoint(run, pause)
    np.testing.assert_array_equal(load_result(run.job_dir.result_model_path)["numpy_key"], HELLO_MODEL + 3)
    host = "relay-1" if "relays" in hosts else "client-rank-1"
    again = [e for e in events(run.job_dir.root, host) if e["event"] == "children_reregistered"]
    assert again and again[0]["children"] == 2
