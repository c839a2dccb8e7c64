"""Every end is recorded: a server killed with SIGKILL leaves status.json 'failed' with the cause, and
get_result() raises with it; a second deployment of a running or completed job dir is refused."""

from __future__ import annotations

import os
import signal

import pytest

from hpcflare.errors import ConfigError, JobFailedError
from tests.conftest import SLOW, wait_for_event


def test_server_killed_with_sigkill_leaves_a_failed_status_with_the_cause(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, num_rounds=3, train_args="1").execute(local_env)
    wait_for_event(run.job_dir.root, "server", "round_started")
    os.kill(run.server.pid, signal.SIGKILL)
    with pytest.raises(
        JobFailedError, match="server process ended without recording an end: killed by signal 9"
    ):
        run.get_result(timeout=120)
    status = run.job_dir.read_status()
    assert status["state"] == "failed" and status["exit_code"] == -9


def test_a_running_job_dir_cannot_be_deployed_again(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, num_rounds=1, train_args="3").execute(local_env)
    wait_for_event(run.job_dir.root, "server", "server_started")
    with pytest.raises(ConfigError, match="is already running"):
        local_env.deploy(run.job_dir)
    run.get_result(timeout=120)
    with pytest.raises(ConfigError, match="already completed"):
        local_env.deploy(run.job_dir)
    assert run.job_dir.read_status()["state"] == "completed"
