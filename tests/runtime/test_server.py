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


def test_the_server_logs_a_round_started_before_any_of_its_results(make_recipe, local_env):
    from tests.conftest import SLOW

    run = make_recipe(SLOW, n_clients=3, num_rounds=3, train_args="0").execute(local_env)
    run.get_result(timeout=120)
    order = [(e["event"], e.get("round")) for e in events(run.job_dir.root, "server")]
    for number in (1, 2, 3):
        started = order.index(("round_started", number))
        results = [i for i, (event, r) in enumerate(order) if event == "result_accepted" and r == number]
        assert len(results) == 3 and started < min(results), order
