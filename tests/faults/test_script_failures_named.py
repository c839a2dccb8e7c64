"""Failures at start are named truthfully: a script that crashes at import says where (file:line) and the
job fails at once with that reason; a script that returns without flare.init() or without sending its result
is reported by name as such."""

from __future__ import annotations

import time

import pytest

from hpcflare.errors import JobFailedError
from hpcflare.exitcodes import ExitCode
from tests.conftest import events

SCRIPT = """
import os, sys
import hpcflare.client as flare
mode, site = sys.argv[1], os.environ.get("HPCFLARE_SITE_NAME")
if site == "site-2" and mode == "import_error":
    import no_such_module_anywhere
if site == "site-2" and mode == "no_init":
    sys.exit(0)
flare.init()
while flare.is_running():
    model = flare.receive()
    if site == "site-2" and mode == "no_send":
        break
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def test_crash_at_import_fails_the_job_at_once_naming_site_exception_and_line(make_recipe, local_env):
    run = make_recipe(
        SCRIPT, n_clients=2, min_clients=2, train_args="import_error", settings={"registration_timeout": 60}
    ).execute(local_env)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        run.get_result(timeout=60)
    message = str(info.value)
    assert time.monotonic() - t0 < 30  # not the 60 s registration_timeout
    assert "site-2" in message and "ModuleNotFoundError" in message and "client.py:6" in message
    # known during registration or as round 1 starts, depending on timing; never blamed on a timeout
    assert "registered within" not in message and "round_timeout" not in message


@pytest.mark.parametrize(
    "mode, words",
    [("no_init", "without calling flare.init()"), ("no_send", "without sending its result for round 1")],
)
def test_script_that_returns_early_is_reported_by_name(make_recipe, local_env, mode, words):
    run = make_recipe(SCRIPT, n_clients=3, min_clients=2, num_rounds=2, train_args=mode).execute(local_env)
    run.get_result(timeout=120)
    assert run.exit_codes["site-2"] == ExitCode.TRAIN_SCRIPT_FAILED
    failed = [
        e
        for e in events(run.job_dir.root, "server")
        if e["event"] == "client_failed" and e["site"] == "site-2"
    ]
    assert failed and words in failed[0]["reason"]
