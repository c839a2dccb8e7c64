"""Membership's record of a host's silences: a host back from a stall may first send its result, then its
heartbeat; the longest silence is kept until the heartbeat's handler has read it."""

from __future__ import annotations

import time

from hpcflare.runtime.host.membership import Membership


def test_the_longest_silence_is_kept_until_read():
    members = Membership(["relay-1"], heartbeat_timeout=3.0)
    record, _ = members.register("relay-1", token="t")
    record.last_seen = time.monotonic() - 6.5  # stopped for 6.5 s
    members.check("relay-1", "t")  # its partial aggregate arrives first
    members.check("relay-1", "t")  # then its heartbeat, a moment later
    assert record.last_gap >= 6.4
    record.last_gap = 0.0  # the heartbeat's handler told it once
    members.check("relay-1", "t")
    assert record.last_gap < 1.0
