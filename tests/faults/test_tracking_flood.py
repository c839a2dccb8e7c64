"""A site that bypasses hpcflare.client's caps floods Track calls: the server (and a relay in between) keeps at
most the per-site, per-round cap, warns once per site and round, and the job completes."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import events, load_result

FLOOD = """
import hpcflare.client as flare
from hpcflare.transport.api import Rpc
ctx = flare.init()
while flare.is_running():
    model = flare.receive()
    for batch in range(10):  # 5,000 records a round, straight onto the RPC
        records = [{"key": "flood", "value": float(i), "round": ctx.round, "step": batch * 500 + i}
                   for i in range(500)]
        ctx.agent.connection.call(Rpc.TRACK, {"records": records}, 30)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


@pytest.mark.parametrize("relays", [0, 1])
def test_a_tracking_flood_is_cut_at_the_cap(make_recipe, local_env, relays):
    run = make_recipe(
        FLOOD,
        n_clients=2,
        num_rounds=2,
        relays=relays,
        tracking=["csv"],
        settings={"tracking_max_records_per_round": 300},
    ).execute(local_env)
    load_result(run.get_result(timeout=180))
    with open(run.job_dir.root / "tracking" / "steps.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["key"] == "flood"]
    per_site = {site: sum(r["site"] == site for r in rows) for site in ("site-1", "site-2")}
    assert all(0 < n <= 2 * 300 for n in per_site.values()), per_site  # two rounds, each at most the cap
    host = "relay-1" if relays else "server"
    dropped = [e for e in events(run.job_dir.root, host) if e["event"] == "tracking_dropped"]
    assert sorted((e["site"], e["round"]) for e in dropped) == [
        ("site-1", 1),
        ("site-1", 2),
        ("site-2", 1),
        ("site-2", 2),
    ]  # once per site and round
