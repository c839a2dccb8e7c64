"""The hello-numpy check, end to end with real processes and real gRPC."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hpcflare.exitcodes import ExitCode
from tests.conftest import HELLO_MODEL, REPO, events, load_result

HELLO_CLIENT = REPO / "recipes" / "hello-numpy" / "client.py"


@pytest.mark.parametrize("update_type", ["full", "diff"])
def test_hello_numpy_one_round_two_clients_local(make_recipe, local_env, update_type):
    recipe = make_recipe(HELLO_CLIENT.read_text(), train_args=f"--update_type {update_type}")
    run = recipe.execute(local_env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(result["numpy_key"], [[2, 3, 4], [5, 6, 7], [8, 9, 10]])
    assert run.exit_codes == {"server": 0, "site-1": 0, "site-2": 0}
    assert run.get_status()["state"] == "completed"
    accepted = [e["site"] for e in events(run.job_dir.root, "server") if e["event"] == "result_accepted"]
    assert sorted(accepted) == ["site-1", "site-2"]


def test_hello_numpy_sim_env_three_rounds(make_recipe, sim_env):
    recipe = make_recipe(HELLO_CLIENT.read_text(), num_rounds=3, train_args="--update_type diff")
    run = recipe.execute(sim_env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 3)
    assert run.exit_codes == {"server": ExitCode.OK, "site-1": ExitCode.OK, "site-2": ExitCode.OK}


WEIGHTED = """
import hpcflare.client as flare
flare.init()
add, steps = {"site-1": (1.0, 1), "site-2": (4.0, 3)}[flare.get_site_name()]
while flare.is_running():
    model = flare.receive()
    out = {k: v + add for k, v in model.params.items()}
    flare.send(flare.FLModel(params=out, meta={"NUM_STEPS_CURRENT_ROUND": steps}))
"""


def test_fedavg_weights_by_num_steps(make_recipe, local_env):
    run = make_recipe(WEIGHTED).execute(local_env)
    result = load_result(run.get_result(timeout=120))
    # (1 * 1 + 4 * 3) / (1 + 3) = 3.25 added to every element
    np.testing.assert_allclose(result["numpy_key"], HELLO_MODEL + 3.25)


def test_readme_first_command_runs_hello_numpy(tmp_path):
    """`hpcflare run recipes/hello-numpy` prints per-round progress and where the result was written."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcflare.cli",
            "run",
            str(REPO / "recipes" / "hello-numpy"),
            "--job-root",
            str(tmp_path / "jobs"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for n in (1, 2, 3):
        assert f"round {n}/3 completed" in proc.stdout
    assert "result model:" in proc.stdout and "global_model.safetensors" in proc.stdout
    assert "[[ 4.  5.  6.]" in proc.stdout
