"""Swarm learning on real processes: sites aggregate in turn and serve each other the model."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.recipe import SwarmRecipe
from tests.conftest import FAST, HELLO_MODEL, events, load_result

SCRIPT = """
import hpcflare.client as flare
flare.init()
add = int(flare.get_site_name()[-1])
while flare.is_running():
    m = flare.receive()
    flare.send(flare.FLModel(params={"numpy_key": m.params["numpy_key"] + add}, metrics={"add": add}))
"""


@pytest.mark.parametrize("tls", ["off", "on"])
def test_sites_aggregate_in_turn(tmp_path, local_env, tls):
    path = tmp_path / "client.py"
    path.write_text(SCRIPT)
    recipe = SwarmRecipe(
        name="swarm",
        model={"numpy_key": HELLO_MODEL},
        min_clients=3,
        num_rounds=3,
        train_script=path,
        settings=dict(FAST),
        tls=tls,
    )
    run = recipe.execute(local_env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_allclose(result["numpy_key"], HELLO_MODEL + 3 * 2)  # mean of +1, +2, +3 per round
    server = events(run.job_dir.root, "server")
    assert [e["aggregator"] for e in server if e["event"] == "swarm_round"] == ["site-1", "site-2", "site-3"]
    completed = [e for e in server if e["event"] == "round_completed"]
    assert [e["bytes_sent"] > 0 for e in completed] == [True, False, False]  # the server served round 1 only
    for site in ("site-1", "site-2", "site-3"):
        via = [e["via"] for e in events(run.job_dir.root, site) if e["event"] == "model_received"]
        assert via == ["shared memory", "swarm peer", "swarm peer"]  # the server's model mapped on this host
    assert any(e["event"] == "swarm_aggregated" for e in events(run.job_dir.root, "site-2"))


SLOW_SWARM = SCRIPT.replace("m = flare.receive()", "m = flare.receive(); time.sleep(1.5)").replace(
    "import hpcflare.client as flare", "import time\nimport hpcflare.client as flare"
)


def test_dead_aggregator_restarts_the_round(tmp_path, local_env):
    import os
    import signal
    import time

    path = tmp_path / "client.py"
    path.write_text(SLOW_SWARM)
    recipe = SwarmRecipe(
        name="swarm",
        model={"numpy_key": HELLO_MODEL},
        min_clients=2,
        n_clients=3,
        num_rounds=3,
        train_script=path,
        settings=dict(FAST),
    )
    run = recipe.execute(local_env)
    deadline = time.monotonic() + 60
    while not any(
        e["event"] == "task_received" and e["round"] == 2 for e in events(run.job_dir.root, "site-2")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(run.client_pid("site-2"), signal.SIGKILL)  # round 2's aggregator dies while the others train
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_allclose(result["numpy_key"], HELLO_MODEL + 2 + 2 + 2)  # (1+2+3)/3, then (1+3)/2 twice
    server = events(run.job_dir.root, "server")
    assert any(e["event"] == "round_restarted" and e["lost"] == "site-2" for e in server)
    assert [e["aggregator"] for e in server if e["event"] == "swarm_round"] == ["site-1", "site-3", "site-1"]
