"""SplitNN's server side: the per-batch mailbox (who may send what, back pressure, gone sites named, bad arrays
refused) and the model parts each site may replace."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.client.split import SplitLink, _decode, _encode
from hpcflare.strategy.api import ClientUpdate, ServerContext, UpdateKind
from hpcflare.strategy.splitnn import SplitNN

SITES = ["site-1", "site-2", "site-3"]


def strategy(live=SITES, **kwargs):
    s = SplitNN("site-1", **kwargs)
    alive = set(live)
    s.start_services(ServerContext(None, "127.0.0.1", None, None, live=lambda: alive))
    s.plan_round(1, 3, list(SITES))
    return s, alive


def link(s, site):
    config = s.configure_round(1, 3)["splitnn"]
    return SplitLink(config, 1, site, lambda request: s.exchange(site, request))


def test_a_batch_goes_up_to_the_label_owner_and_its_gradients_back():
    s, _ = strategy()
    bottoms = {site: link(s, site) for site in ("site-2", "site-3")}
    owner = link(s, "site-1")
    assert owner.is_label_owner and owner.others == ["site-2", "site-3"]
    got: dict[str, np.ndarray] = {}

    def bottom(site):
        bottoms[site].send_activations(0, np.full((4, 2), float(site[-1]), np.float32))
        got[site] = bottoms[site].gradient(0)

    threads = [threading.Thread(target=bottom, args=(site,)) for site in bottoms]
    for t in threads:
        t.start()
    acts = owner.activations(0)
    assert sorted(acts) == ["site-2", "site-3"] and acts["site-3"][0, 0] == 3.0
    owner.send_gradients(0, {site: -a for site, a in acts.items()})
    for t in threads:
        t.join(10)
    assert got["site-2"].shape == (4, 2) and got["site-2"][0, 0] == -2.0 and got["site-3"][1, 1] == -3.0


def test_a_site_sending_ahead_waits_at_the_window():
    s, _ = strategy(window=2)
    bottom = s.exchange
    for batch in (0, 1):
        assert bottom("site-2", _act(batch)) == {"status": "ok"}
    assert bottom("site-2", _act(2)) == {"status": "wait"}  # back pressure, not an error
    bottom("site-3", _act(0))
    assert s.exchange("site-1", {"op": "acts", "round": 1, "phase": "train", "batch": 0})["status"] == "ok"
    assert bottom("site-2", _act(2)) == {"status": "ok"}


def test_a_gone_site_fails_the_wait_naming_it():
    s, alive = strategy()
    s.exchange("site-2", _act(0))
    alive.discard("site-3")
    with pytest.raises(errors.UpdateRejectedError, match="site-3 is gone"):
        s.exchange("site-1", {"op": "acts", "round": 1, "phase": "train", "batch": 0})
    alive.discard("site-1")
    with pytest.raises(errors.RoundFailedError, match="label owner 'site-1' is not among the live sites"):
        s.plan_round(2, 3, ["site-2", "site-3"])


def test_bad_messages_are_refused():
    s, _ = strategy()
    with pytest.raises(errors.MalformedMessageError, match="label owner keeps its own"):
        s.exchange("site-1", _act(0))
    with pytest.raises(errors.MalformedMessageError, match="only the label owner takes"):
        s.exchange("site-2", {"op": "acts", "round": 1, "phase": "train", "batch": 0})
    with pytest.raises(errors.MalformedMessageError, match="does not match"):
        s.exchange("site-2", {**_act(0), "data": {"dtype": "float32", "shape": [4, 2], "data": b"x"}})
    with pytest.raises(errors.UpdateRejectedError, match="NaN"):
        s.exchange("site-2", {**_act(0), "data": _encode(np.full((1, 1), np.nan, np.float32))})
    with pytest.raises(errors.MalformedMessageError, match="2-D"):
        s.exchange("site-2", {**_act(0), "data": {"dtype": "float32", "shape": [4], "data": bytes(16)}})
    with pytest.raises(errors.StaleTaskError):
        s.exchange("site-2", {**_act(0), "round": 7})
    with pytest.raises(errors.UpdateRejectedError, match="not one of round 1's sites"):
        s.exchange("site-9", _act(0))
    with pytest.raises(errors.MalformedMessageError, match="must name every other site"):
        s.exchange("site-1", {"op": "grads", "round": 1, "phase": "train", "batch": 0, "data": {}})
    s.exchange("site-2", _act(0))
    with pytest.raises(errors.MalformedMessageError, match="sent twice"):
        s.exchange("site-2", _act(0))
    big = SplitNN("site-1", max_batch_bytes=1024)
    big.plan_round(1, 1, SITES)
    with pytest.raises(errors.MalformedMessageError, match="exceeds 1024 bytes"):
        big.exchange("site-2", {**_act(0), "data": _encode(np.zeros((64, 8), np.float32))})


def test_a_site_replaces_only_its_own_part_of_the_model():
    s, _ = strategy()
    parts = {"site-1/top.w": np.zeros(2, np.float32), "site-2/bottom.w": np.zeros(2, np.float32)}
    aggregator = s.new_aggregator(parts)
    aggregator.add(ClientUpdate("site-2", {"site-2/bottom.w": np.ones(2, np.float32)}, UpdateKind.FULL, 1))
    with pytest.raises(errors.UpdateRejectedError, match="only its own part"):
        aggregator.add(ClientUpdate("site-3", {"site-1/top.w": np.ones(2, np.float32)}, UpdateKind.FULL, 1))
    result = aggregator.result()
    assert result["site-2/bottom.w"][0] == 1.0 and result["site-1/top.w"][0] == 0.0


def test_arrays_travel_without_pickle_and_keep_their_values():
    tensor = np.arange(6, dtype=np.float64).reshape(2, 3)
    encoded = _encode(tensor)
    assert set(encoded) == {"dtype", "shape", "data"} and isinstance(encoded["data"], bytes)
    np.testing.assert_array_equal(_decode(encoded), tensor)


def _act(batch: int) -> dict:
    return {
        "op": "act",
        "round": 1,
        "phase": "train",
        "batch": batch,
        "data": _encode(np.ones((4, 2), np.float32)),
    }
