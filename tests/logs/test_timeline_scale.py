"""The timeline at scale: natural site order, requeued lives (not red failures), straggler marks, and one
aggregate lane for the quiet sites beyond MAX_LANES so 128+ sites stay legible."""

from __future__ import annotations

import json

from hpcflare.cli import main
from hpcflare.logs.timeline import MAX_LANES, collect
from tests.conftest import SLOW


def _log(job_dir, rank, role, events):
    with open(job_dir.log_dir / f"{rank}.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps({"rank": rank, "role": role, "level": "info", "msg": e["event"], **e}) + "\n")


def test_150_sites_two_lives_and_a_straggler(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=150).export(tmp_path / "jobs")
    _log(
        job_dir,
        "server",
        "server",
        [
            {"t": 0, "event": "server_started"},
            {"t": 1, "event": "round_started", "round": 1},
            {"t": 9, "event": "stragglers", "round": 1, "stragglers": ["site-7"]},
            {"t": 9, "event": "round_completed", "round": 1},
            {"t": 20, "event": "server_started"},
            {"t": 21, "event": "round_started", "round": 2},
            {"t": 29, "event": "round_completed", "round": 2},
        ],
    )
    for i in range(1, 151):
        events = [
            {"t": 0.5, "event": "registered"},
            {"t": 2, "event": "task_received", "round": 1},
            {"t": 5 + i / 100, "event": "result_sent", "round": 1, "seconds": 0.1},
        ]
        if i == 3:  # stopped by the requeue of life 1: part of that life's end, not a failure
            events.append({"t": 15, "event": "client_failed", "level": "error", "exit_code": 30})
        if i == 99:  # a real failure in the last life
            events.append({"t": 25, "event": "client_failed", "level": "error", "exit_code": 22})
        _log(job_dir, f"site-{i}", "client", events)
    data = collect(job_dir)
    names = [lane["rank"] for lane in data["lanes"]]
    assert len(names) <= MAX_LANES and data["ranks"] == 151
    assert names[:3] == ["server", "site-7", "site-99"] and names[-1] == "148 other sites"
    lanes = {lane["rank"]: lane for lane in data["lanes"]}
    assert lanes["site-7"]["stragglers"] == [(9, 1)]
    assert lanes["site-99"]["failures"] and data["lives"] == [0, 20]
    assert lanes["148 other sites"]["train"] == [(1, 2, 5 + 150 / 100)]
    out = tmp_path / "t.png"
    assert main(["logs", "timeline", str(job_dir.root), "-o", str(out)]) == 0 and out.stat().st_size > 10_000


def test_sites_sort_naturally(make_recipe, tmp_path):
    job_dir = make_recipe(SLOW, n_clients=12).export(tmp_path / "jobs")
    _log(job_dir, "server", "server", [{"t": 0, "event": "server_started"}])
    for i in (10, 2, 1, 12):
        _log(job_dir, f"site-{i}", "client", [{"t": 1, "event": "registered"}])
    assert [lane["rank"] for lane in collect(job_dir)["lanes"]] == [
        "server",
        "site-1",
        "site-2",
        "site-10",
        "site-12",
    ]


def test_ranks_that_never_logged_get_a_lane_from_the_servers_word(make_recipe, tmp_path):
    """site-3 was SIGKILLed before its first log line, site-4 never started: each still has a lane with the
    server's verdict; ranks and sites are counted apart (4 sites as virtual clients of 2 client ranks)."""
    job_dir = make_recipe(SLOW, n_clients=4, clients_per_rank=2).export(tmp_path / "jobs")
    _log(
        job_dir,
        "server",
        "server",
        [
            {"t": 0, "event": "server_started"},
            {"t": 4, "event": "clients_excluded", "missing": ["site-4"]},
            {"t": 6, "event": "client_dead", "site": "site-3", "round": 1},
        ],
    )
    for site in ("site-1", "site-2"):
        _log(job_dir, site, "client", [{"t": 1, "event": "registered"}])
    data = collect(job_dir)
    lanes = {lane["rank"]: lane for lane in data["lanes"]}
    assert lanes["site-3 (no log)"]["failures"] == [(6, "client_dead")]
    assert lanes["site-4 (no log)"]["failures"] == [(4, "excluded")]
    assert data["ranks"] == 3 and data["sites"] == 4  # the server and 2 client ranks; 4 sites
