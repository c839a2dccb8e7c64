"""Bad input and dead peers, on real processes: clear errors, the job continues or fails cleanly, never hangs."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest

from hpcflare.errors import JobFailedError
from hpcflare.exitcodes import ExitCode
from tests.conftest import HELLO_MODEL, events, load_result

# site-3 misbehaves in the way named by its train arg; site-1 and site-2 are healthy
SCRIPT = """
import sys, time
import numpy as np
import hpcflare.client as flare
mode = sys.argv[1]
flare.init()
bad = flare.get_site_name() == "site-3"
if bad and mode == "missing_data":
    open("/nonexistent/site-3/train.csv").read()
while flare.is_running():
    model = flare.receive()
    params = {k: v + 1 for k, v in model.params.items()}
    if bad and mode == "not_flmodel":
        flare.send(params)
    if bad and mode == "wrong_shape":
        params = {"numpy_key": np.ones((2, 2), dtype=np.float32)}
    if bad and mode == "nan":
        params["numpy_key"][0, 0] = np.nan
    if bad and mode == "hang":
        time.sleep(3600)
    if mode == "slow":
        time.sleep(3)
    flare.send(flare.FLModel(params=params))
"""


def _server_events(run, name):
    return [e for e in events(run.job_dir.root, "server") if e["event"] == name]


@pytest.mark.parametrize(
    "mode, site3_code",
    [
        ("not_flmodel", ExitCode.TRAIN_SCRIPT_FAILED),
        ("wrong_shape", ExitCode.UPDATE_REJECTED),
        ("nan", ExitCode.UPDATE_REJECTED),
    ],
)
def test_bad_client_is_excluded_and_job_continues(make_recipe, local_env, mode, site3_code):
    recipe = make_recipe(SCRIPT, n_clients=3, min_clients=2, num_rounds=2, train_args=mode)
    run = recipe.execute(local_env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(
        result["numpy_key"], HELLO_MODEL + 2
    )  # only the healthy sites' +1 per round
    assert run.exit_codes["server"] == 0 and run.exit_codes["site-3"] == site3_code
    site3_log = (run.job_dir.log_dir / "site-3.log").read_text()
    if mode == "not_flmodel":
        assert "expects an FLModel, got dict" in site3_log
    else:
        reasons = " ".join(e["reason"] for e in _server_events(run, "result_rejected"))
        assert {"wrong_shape": "has shape (2, 2), the global model has (3, 3)", "nan": "contains NaN or Inf"}[
            mode
        ] in reasons
        assert "rejected" in site3_log


def test_round_fails_cleanly_when_too_few_valid_results(make_recipe, local_env):
    recipe = make_recipe(SCRIPT, n_clients=3, min_clients=3, num_rounds=2, train_args="nan")
    run = recipe.execute(local_env)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError, match="fewer than min_clients=3"):
        run.get_result(timeout=120)
    assert time.monotonic() - t0 < 30  # fails fast, not at round_timeout
    assert run.exit_codes["server"] == ExitCode.ROUND_FAILED
    assert run.get_status()["state"] == "failed"
    assert not run.job_dir.result_model_path.exists()


def test_a_site_that_fails_at_start_fails_the_job_in_seconds_with_its_own_cause(make_recipe, local_env):
    from hpcflare.logs.diagnose import diagnose

    run = make_recipe(SCRIPT, n_clients=3, min_clients=3, num_rounds=2, train_args="missing_data").execute(
        local_env
    )
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as failed:
        run.get_result(timeout=120)
    assert time.monotonic() - t0 < 60  # not settings.registration_timeout or round_timeout later
    # the site may or may not have registered before its script failed: either way its own cause comes first
    cause = re.compile(
        r"site-3 failed( at start)?: (TRAIN_SCRIPT_FAILED: )?FileNotFoundError: \[Errno 2\] No such file or "
        r"directory: '/nonexistent/site-3/train.csv'.*; so .*min_clients=3"
    )
    status = run.get_status()["message"]
    assert cause.match(status), status
    assert f"failed: {status}. Logs: " in str(failed.value)
    findings, _ = diagnose(run.job_dir)
    first = [f for f in findings if f.severity == "error"][0]
    assert "site-3" in first.what and "FileNotFoundError" in first.what


def test_a_site_that_cannot_start_ends_the_registration_wait_with_its_cause(make_recipe, tmp_path):
    from hpcflare.env import LocalEnv

    run = make_recipe(
        SCRIPT,
        n_clients=2,
        min_clients=2,
        num_rounds=1,
        train_args="ok",
        tls="on",
        settings={"registration_timeout": 120},
    ).execute(
        LocalEnv(
            job_root=tmp_path / "jobs", verbose=False, site_env={"site-2": {"HPCFLARE_KIT": "/nowhere/kit"}}
        )
    )
    t0 = time.monotonic()
    with pytest.raises(
        JobFailedError, match=r"site-2 failed at start: CONFIG_ERROR: no startup kit at /nowhere/kit"
    ):
        run.get_result(timeout=120)
    assert time.monotonic() - t0 < 60  # not settings.registration_timeout (120 s) later
    assert run.exit_codes["server"] == ExitCode.REGISTRATION_TIMEOUT


def test_killed_client_is_declared_dead_and_round_closes(make_recipe, local_env):
    recipe = make_recipe(SCRIPT, n_clients=3, min_clients=2, num_rounds=1, train_args="hang")
    run = recipe.execute(local_env)
    deadline = time.monotonic() + 60
    while not any(e["event"] == "task_received" for e in events(run.job_dir.root, "site-3")):
        assert time.monotonic() < deadline, "site-3 never got its task"
        time.sleep(0.2)
    os.kill(run.client_pid("site-3"), signal.SIGKILL)
    result = load_result(run.get_result(timeout=60))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 1)
    dead = _server_events(run, "client_dead")
    assert [e["site"] for e in dead] == ["site-3"] and "heartbeat_timeout" in dead[0]["msg"]
    assert run.exit_codes["site-3"] == -signal.SIGKILL


def test_straggler_excluded_at_round_timeout(make_recipe, local_env):
    recipe = make_recipe(
        SCRIPT, n_clients=3, min_clients=2, num_rounds=1, train_args="hang", settings={"round_timeout": 4}
    )
    run = recipe.execute(local_env)
    result = load_result(run.get_result(timeout=60))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 1)
    stragglers = _server_events(run, "stragglers")
    assert stragglers and stragglers[0]["stragglers"] == ["site-3"]
    # site-3's script hangs forever: its launcher stops it end_grace after the job ended
    assert run.exit_codes["site-3"] == ExitCode.ABORTED
    stopped = [e for e in events(run.job_dir.root, "site-3") if e["event"] == "script_stopped"]
    assert stopped and "settings.end_grace" in stopped[0]["reason"]


def test_clients_exit_with_server_lost_when_server_dies(make_recipe, local_env):
    recipe = make_recipe(
        SCRIPT,
        n_clients=2,
        min_clients=2,
        num_rounds=1,
        train_args="slow",
        settings={"server_lost_timeout": 4},
    )
    run = recipe.execute(local_env)
    deadline = time.monotonic() + 60
    while not any(e["event"] == "task_received" for e in events(run.job_dir.root, "site-1")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(run.server.pid, signal.SIGKILL)
    run.wait(timeout=60)  # clients are mid-"training"; their send finds the server gone
    assert run.exit_codes["site-1"] == ExitCode.SERVER_LOST
    assert "is unreachable" in (run.job_dir.log_dir / "site-1.log").read_text()


def test_unknown_site_name_is_refused(make_recipe, local_env, tmp_path):
    from hpcflare.runtime.launch import run_client

    recipe = make_recipe(SCRIPT, n_clients=2, min_clients=2, train_args="slow")
    run = recipe.execute(local_env)
    try:
        code = run_client(run.job_dir, "intruder", per_thread=True)
        assert code == ExitCode.AUTH_REFUSED
        assert "not one of this job's sites" in (run.job_dir.log_dir / "intruder.log").read_text()
        # the server's human log names the refused site and why, not only "N of M registered"
        assert "refused the registration of 'intruder'" in (run.job_dir.log_dir / "server.log").read_text()
        load_result(run.get_result(timeout=60))
    finally:
        run.abort()


def test_min_fraction_keeps_waiting_for_enough_of_the_round(make_recipe, local_env):
    """3 of 4 clients answer but one hangs: min_clients=2 alone would close at the deadline, min_fraction=1.0
    turns the deadline into a clear failure."""
    recipe = make_recipe(
        SCRIPT,
        n_clients=4,
        min_clients=2,
        num_rounds=1,
        train_args="hang",
        min_fraction=1.0,
        settings={"round_timeout": 3},
    )
    run = recipe.execute(local_env)
    with pytest.raises(
        JobFailedError, match=r"fewer than 4 \(min_fraction=1 of the round's clients; min_clients=2\)"
    ):
        run.get_result(timeout=60)
    run.abort()
