"""One first cause, said the same way everywhere: for each failure class, on real LocalEnv jobs, status.json's
message, the exception Run.get_result() raises, the console's last line and the first error `logs diagnose`
reports all begin with the same cause, naming the right party, and the job ends in seconds, not at a timeout."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest

from hpcflare.env import LocalEnv
from hpcflare.errors import JobFailedError
from hpcflare.logs.diagnose import diagnose
from tests.conftest import events, wait_until
from tests.runtime.test_failures import SCRIPT

CASES: dict[str, dict[str, Any]] = {
    # the party, and the words its cause starts with (a regular expression)
    "site missing its kit at start": {
        "recipe": {"train_args": "ok", "tls": "on"},
        "site_env": {"site-3": {"HPCFLARE_KIT": "/nowhere/kit"}},
        "cause": r"site-3 failed at start: CONFIG_ERROR: no startup kit at /nowhere/kit",
    },
    "site script fails before its first task": {
        "recipe": {"train_args": "missing_data"},
        "cause": r"site-3 failed( at start)?: (TRAIN_SCRIPT_FAILED: )?FileNotFoundError",  # before or after it registered
    },
    "site sends NaN": {
        "recipe": {"train_args": "nan"},
        "cause": r"site-3's result rejected: ",
    },
    "site SIGKILLed mid-round": {
        "recipe": {"train_args": "hang", "settings": {"heartbeat_timeout": 3}},
        "kill": "site-3",
        "cause": r"site-3 dead: no heartbeat",
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_run_and_diagnose_name_the_same_first_cause(make_recipe, tmp_path, capsys, case):
    spec = CASES[case]
    recipe = make_recipe(
        SCRIPT,
        n_clients=3,
        min_clients=3,
        num_rounds=2,
        **{"settings": {"registration_timeout": 120}, **spec["recipe"]},
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", verbose=False, site_env=spec.get("site_env")))
    if "kill" in spec:
        wait_until(
            lambda: any(e["event"] == "task_received" for e in events(run.job_dir.root, spec["kill"])),
            f"{spec['kill']}'s task",
            timeout=120,
        )
        os.kill(run.client_pid(spec["kill"]), signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as failed:
        run.get_result(timeout=180)
    assert time.monotonic() - t0 < 60, "the job waited for a timeout instead of ending at its cause"
    status = run.get_status()["message"]
    assert re.match(spec["cause"], status), status
    assert f"failed: {status}. Logs: " in str(failed.value)  # Run's exception carries the status message
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the console's last line
    assert last == f"[hpcflare] job failed: {status}", last
    findings, _ = diagnose(run.job_dir)
    first = [f for f in findings if f.severity == "error"][0]
    assert first.what == f"the job failed: {status}", first.what
