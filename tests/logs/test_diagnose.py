"""Real failing jobs; `hpcflare logs diagnose` names the cause and the setting to change."""

from __future__ import annotations

import os
import signal
import time

import pytest

from hpcflare.cli import main
from hpcflare.errors import JobFailedError
from tests.conftest import events
from tests.runtime.test_failures import SCRIPT as FAILURES
from tests.runtime.test_resilience import SCRIPT as RESILIENCE


def diagnose(job_dir, capsys) -> str:
    assert main(["logs", "diagnose", str(job_dir)]) == 0
    return capsys.readouterr().out


def test_rejected_update_and_failed_round(make_recipe, local_env, capsys):
    run = make_recipe(FAILURES, n_clients=3, min_clients=3, num_rounds=2, train_args="nan").execute(local_env)
    with pytest.raises(JobFailedError):
        run.get_result(timeout=60)
    text = diagnose(run.job_dir.root, capsys)
    assert "failed; 0/2 rounds completed" in text and "stopped in round 1" in text
    assert "result from site-3 rejected" in text and "NaN or Inf" in text and "ROUND_FAILED" in text


def _run_killing_site3(make_recipe, local_env, settings):
    run = make_recipe(
        FAILURES, n_clients=3, min_clients=2, num_rounds=1, train_args="hang", settings=settings
    ).execute(local_env)
    deadline = time.monotonic() + 30
    while not any(e["event"] == "task_received" for e in events(run.job_dir.root, "site-3")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(run.client_pid("site-3"), signal.SIGKILL)  # site-3 hangs in training, then dies silently
    run.get_result(timeout=60)
    return run


def test_killed_client_is_reported_dead(make_recipe, local_env, capsys):
    run = _run_killing_site3(make_recipe, local_env, {"heartbeat_timeout": 3, "round_timeout": 60})
    text = diagnose(run.job_dir.root, capsys)
    assert "completed; 1/1 rounds" in text
    assert "site-3 died in round 1 (no heartbeat for" in text and "OOM?" in text


def test_a_dead_client_rank_is_one_finding_with_its_sites(make_recipe, local_env, capsys):
    run = make_recipe(
        FAILURES,
        n_clients=4,
        min_clients=2,
        num_rounds=1,
        train_args="slow",
        clients_per_rank=2,
        settings={"heartbeat_timeout": 3, "server_lost_timeout": 6, "round_timeout": 120},
    ).execute(local_env)
    deadline = time.monotonic() + 60
    while not any(e["event"] == "task_received" for e in events(run.job_dir.root, "site-3")):
        assert time.monotonic() < deadline, "site-3 never got its task"
        time.sleep(0.1)
    os.kill(run.client_pid("client-rank-2"), signal.SIGKILL)  # the rank of site-3 and site-4
    run.get_result(timeout=120)
    text = diagnose(run.job_dir.root, capsys)
    assert "[WARNING] client-rank-2 died in round 1 with its 2 site(s) ['site-3', 'site-4']" in text
    assert "site-3 died" not in text and "site-4 died" not in text
    assert "raise settings.server_lost_timeout (now 6s); the job completed without it" in text


def test_too_short_round_timeout_names_the_setting(make_recipe, local_env, capsys):
    run = _run_killing_site3(make_recipe, local_env, {"heartbeat_timeout": 30, "round_timeout": 4})
    text = diagnose(run.job_dir.root, capsys)
    assert "round 1: closed at round_timeout without ['site-3']" in text
    assert "raise settings.round_timeout (now 4s, try 8)" in text


def test_clients_that_never_register(make_recipe, local_env, capsys):
    run = make_recipe(
        RESILIENCE,
        n_clients=3,
        min_clients=2,
        train_args="hang_at_start",
        settings={"registration_timeout": 3, "startup_timeout": 5},
    ).execute(local_env)
    run.get_result(timeout=60)
    run.abort()
    text = diagnose(run.job_dir.root, capsys)
    assert "clients never registered: ['site-3']" in text
    # its process was alive (hung before flare.init()): the start-up grace, not registration, is the knob
    assert "['site-3'] were alive but still starting" in text
    assert "raise settings.startup_timeout (now 5s, try 10)" in text


def test_not_a_job_dir(tmp_path, capsys):
    assert main(["logs", "diagnose", str(tmp_path)]) == 2
    assert "no job.yaml" in capsys.readouterr().err


def test_counts_in_messages_read_right_in_the_singular():
    from hpcflare.rank_logger import iso_utc, plural

    assert [plural(1, "round"), plural(3, "round"), plural(0, "result")] == [
        "1 round",
        "3 rounds",
        "0 results",
    ]
    assert plural(2, "client rank") == "2 client ranks" and plural(2, "child", "children") == "2 children"
    assert iso_utc(0) == "1970-01-01T00:00:00.000+00:00"
