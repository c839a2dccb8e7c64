"""Poisoned aggregates are impossible: absurd weights are refused, a non-finite aggregate fails the round
and never replaces the last good checkpoint. Real processes, real gRPC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcflare.errors import JobFailedError
from hpcflare.exitcodes import ExitCode
from hpcflare.fileio import sha256_file
from tests.conftest import HELLO_MODEL, events, load_result

# site-3 attacks in the way its train arg names, from round 2 on (current_round counts from 0, like NVFlare)
SCRIPT = """
import sys
import numpy as np
import hpcflare.client as flare
mode = sys.argv[1]
flare.init()
while flare.is_running():
    model = flare.receive()
    params = {k: v + 1 for k, v in model.params.items()}
    meta = {"NUM_STEPS_CURRENT_ROUND": 1}
    if flare.get_site_name() == "site-3" and model.current_round >= 1:
        if mode == "huge_weight":
            meta["NUM_STEPS_CURRENT_ROUND"] = 1e39
        if mode == "overflow":  # finite values, but value x weight overflows float32
            params = {k: np.full_like(v, 3.0e38) for k, v in params.items()}
            meta["NUM_STEPS_CURRENT_ROUND"] = 2
    flare.send(flare.FLModel(params=params, meta=meta))
"""


def test_absurd_weight_is_refused_and_honest_sites_finish(make_recipe, local_env):
    run = make_recipe(SCRIPT, n_clients=3, min_clients=2, num_rounds=2, train_args="huge_weight").execute(
        local_env
    )
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)
    assert run.exit_codes["site-3"] == ExitCode.UPDATE_REJECTED
    assert run.exit_codes["site-1"] == run.exit_codes["site-2"] == ExitCode.OK
    rejected = [e for e in events(run.job_dir.root, "server") if e["event"] == "result_rejected"]
    assert [e["site"] for e in rejected] == ["site-3"] and "NUM_STEPS_CURRENT_ROUND" in rejected[0]["reason"]


def test_non_finite_aggregate_fails_the_round_and_keeps_the_last_good_checkpoint(make_recipe, local_env):
    run = make_recipe(SCRIPT, n_clients=3, min_clients=2, num_rounds=3, train_args="overflow").execute(
        local_env
    )
    with pytest.raises(JobFailedError, match="round 2: the aggregate of tensor 'numpy_key' is not finite"):
        run.get_result(timeout=120)
    status = run.job_dir.read_status()
    assert status["state"] == "failed" and status["exit_code"] == ExitCode.ROUND_FAILED
    record = json.loads((run.job_dir.models_dir / "checkpoint.json").read_text())
    checkpoint = run.job_dir.models_dir / record["file"]
    assert record["round"] == 1 and sha256_file(checkpoint) == record["sha256"]
    np.testing.assert_array_equal(load_result(checkpoint)["numpy_key"], HELLO_MODEL + 1)
    # honest sites are not blamed: nothing was rejected, nobody declared dead
    names = {e["event"] for e in events(run.job_dir.root, "server")}
    assert "result_rejected" not in names and "client_dead" not in names
