"""A host's caps on tracking records: per site and round (records and bytes), and over the whole job."""

from __future__ import annotations

import json

from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.tracking import TrackingQuota
from hpcflare.settings import Settings


def quota(tmp_path, **settings):
    return TrackingQuota(Settings().replace(**settings), RankLogger(tmp_path, "server", "server"))


def warnings(tmp_path):
    lines = (tmp_path / "server.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["level"] == "WARNING"]


def records(n, text="x", round_number=None):
    return [
        {"key": "k", "value": text, "data_type": "TEXT", "step": i, "round": round_number} for i in range(n)
    ]


def test_records_per_site_and_round(tmp_path):
    q = quota(tmp_path, tracking_max_records_per_round=10)
    assert len(q.admit("a", records(6, round_number=1), 1)) == 6
    assert len(q.admit("a", records(6, round_number=1), 1)) == 4  # the round's cap
    assert q.admit("a", records(3, round_number=1), 1) == []
    assert len(q.admit("b", records(6, round_number=1), 1)) == 6  # another site has its own
    assert len(q.admit("a", records(6, round_number=2), 2)) == 6  # and the next round starts afresh
    assert len(q.admit("a", records(12), 2)) == 10  # records without a round share one budget per site
    assert [(e["event"], e["site"], e["round"]) for e in warnings(tmp_path)] == [
        ("tracking_dropped", "a", 1),
        ("tracking_dropped", "a", None),
    ]


def test_made_up_rounds_buy_no_extra_room(tmp_path):
    q = quota(tmp_path, tracking_max_records_per_round=10)
    forged = [{"key": "k", "value": 1.0, "round": 10**9 + i} for i in range(50)]
    assert len(q.admit("a", forged, 3)) == 10  # all counted against the host's current round
    assert len(q.admit("a", records(5, round_number=2), 3)) == 5  # the previous round is still its own


def test_bytes_per_site_and_round_and_the_job_budget(tmp_path):
    q = quota(tmp_path, tracking_max_bytes_per_round=1000, tracking_max_job_bytes=1500)
    big = records(20, "y" * 90, round_number=1)  # ~130 bytes each
    assert 6 <= len(q.admit("a", big, 1)) <= 8  # about 1000 bytes' worth
    kept = q.admit("b", big, 1)
    assert 0 < len(kept) < 8  # what the job's budget has left
    assert q.admit("c", big[:1], 1) == []  # no room left in the job for another one
    assert [e["event"] for e in warnings(tmp_path)] == ["tracking_dropped", "tracking_budget_spent"]


def test_counts_of_old_rounds_are_let_go(tmp_path):
    q = quota(tmp_path)
    for number in range(1, 20):
        q.admit("a", records(1, round_number=number), number)
    assert len(q._used["a"]) == TrackingQuota.ROUNDS_KEPT
