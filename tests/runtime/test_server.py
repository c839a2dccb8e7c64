"""The server rank: what it says at start."""

from __future__ import annotations

from tests.conftest import events


def test_the_server_says_at_start_what_protects_the_updates(make_recipe, sim_env):
    from hpcflare.runtime.server import update_protections

    run = make_recipe(
        "import hpcflare.client as flare\nflare.init()\nwhile flare.is_running():\n"
        "    m = flare.receive()\n    flare.send(flare.FLModel(params=m.params))\n",
        n_clients=2,
        privacy={"type": "secagg"},
        filters=[{"type": "dp_gaussian", "noise_multiplier": 0.01, "clip": 10.0}],
    ).execute(sim_env)
    run.get_result(timeout=120)
    (said,) = [e for e in events(run.job_dir.root, "server") if e["event"] == "protections"]
    assert said["msg"] == (
        "updates are protected by: secure aggregation (masked updates); differential privacy (Gaussian noise) filter"
    )
    config = run.job_dir.load_config()
    assert update_protections(config, tls=True)[0] == "mutual TLS"
    plain = make_recipe("print(1)\n", n_clients=2).export(run.job_dir.root.parent / "plain").load_config()
    assert update_protections(plain, tls=False) == []
