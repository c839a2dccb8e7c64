"""The site's tracking records on their own: batched Track calls, the per-round cap, values msgpack can carry."""

from __future__ import annotations

import math

import numpy as np

from hpcflare.runtime.site.track_records import TrackBuffer, plain
from hpcflare.transport.api import Rpc
from tests.runtime.site.conftest import events


def buffer(link, **settings):
    connection, parent = link(settings=settings)
    connection.start()
    return TrackBuffer(connection, connection.log), parent


def test_records_go_up_in_one_track_call_when_flushed(link):
    tracks, parent = buffer(link)
    for step in range(5):
        assert tracks.add(
            {"key": "loss", "value": 1.0 / (step + 1), "data_type": "SCALAR", "round": 1, "step": step}
        )
    assert parent.called(Rpc.TRACK) == []  # nothing is due yet
    tracks.flush()
    (call,) = parent.called(Rpc.TRACK)
    assert [r["step"] for r in call["records"]] == list(range(5)) and call["token"] == "token-1"


def test_the_per_round_cap_drops_the_rest_with_one_warning(link):
    tracks, parent = buffer(link, tracking_max_records_per_round=3)
    kept = [tracks.add({"key": "x", "value": i, "round": 1}) for i in range(10)]
    assert kept == [True] * 3 + [False] * 7
    assert tracks.add({"key": "x", "value": 0, "round": 2})  # the next round has its own budget
    tracks.flush()
    assert len(parent.tracked) == 4
    assert len(events(tracks.connection.job_dir, "tracking_dropped")) == 1


def test_kinds_no_receiver_writes_stay_in_the_site_log(link):
    tracks, parent = buffer(link)
    assert not tracks.add({"key": "img", "value": "...", "data_type": "IMAGE", "round": 1})
    tracks.flush()
    assert parent.tracked == []


def test_a_lost_server_loses_records_not_the_round(link):
    tracks, parent = buffer(link, server_lost_timeout=1)
    parent.stop()
    tracks.add({"key": "x", "value": 1, "round": 1})
    tracks.flush()  # logged, never raised into the script
    (lost,) = events(tracks.connection.job_dir, "tracking_lost")
    assert lost["records"] == 1


def test_plain_values():
    assert plain(np.float32(0.5)) == 0.5 and plain(np.array([3])) == 3
    assert plain(math.nan) == "nan" and plain(float("inf")) == "inf"
    assert plain({"a": 1, "nested": {"no": 1}}) == {"a": 1}
    assert plain("x" * 100_000) == "x" * (64 << 10)
