"""The site's link on its own: registration, heartbeats, retries of transient failures, goodbye."""

from __future__ import annotations

import time

import pytest

from hpcflare import errors
from hpcflare.transport.api import Rpc
from tests.conftest import wait_until


def test_registers_with_its_proof_and_keeps_the_token(link):
    connection, parent = link()
    connection.start()
    (request,) = parent.called(Rpc.REGISTER)
    assert request["site"] == "site-1" and request["proof"] == connection.job_dir.registration_proof("site-1")
    assert request["previous_token"] == "" and connection.token == "token-1" and connection.started


def test_heartbeats_carry_the_token_until_closed(link):
    connection, parent = link()
    connection.start()
    wait_until(lambda: len(parent.called(Rpc.HEARTBEAT)) >= 2, "two heartbeats", timeout=30)
    assert all(h["token"] == "token-1" for h in parent.called(Rpc.HEARTBEAT))
    connection.close("failed", "the script raised")
    (goodbye,) = parent.called(Rpc.GOODBYE)
    assert goodbye == {
        "site": "site-1",
        "token": "token-1",
        "status": "failed",
        "reason": "the script raised",
    }
    beats = len(parent.called(Rpc.HEARTBEAT))
    time.sleep(0.6)
    assert len(parent.called(Rpc.HEARTBEAT)) == beats  # no heartbeat after goodbye


def test_a_transient_failure_is_retried_and_the_call_goes_through(link):
    connection, parent = link(settings={"server_lost_timeout": 60})
    connection.start()
    parent.fail[Rpc.GET_TASK] = [errors.StreamTimeoutError("slow")]  # a deadline passed on the parent's side
    back = parent.restart(after=1.0)  # and the parent is down for a second (UNAVAILABLE)
    assert connection.call(Rpc.GET_TASK, {"timeout": 0}, 5) == {"task": "wait"}
    back.join()
    assert len(parent.called(Rpc.GET_TASK)) == 2


def test_retries_end_at_server_lost_timeout_naming_the_call_and_the_setting(link):
    connection, parent = link(settings={"server_lost_timeout": 1})
    connection.start()
    parent.stop()
    t0 = time.monotonic()
    with pytest.raises(
        errors.PeerGoneError,
        match="GetTask: server unreachable for settings.server_lost_timeout=1s: .*unreachable",
    ):
        connection.call(Rpc.GET_TASK, {}, 5)
    assert time.monotonic() - t0 < 30


def test_a_refusal_is_not_retried(link):
    connection, parent = link()
    parent.fail[Rpc.REGISTER] = [errors.UnknownClientError("site-1 is not in this job")]
    with pytest.raises(errors.UnknownClientError, match="not in this job"):
        connection.start()
    assert len(parent.called(Rpc.REGISTER)) == 1 and not connection.started


def test_a_call_before_start_says_the_site_is_not_connected(link):
    connection, _ = link()
    with pytest.raises(errors.PeerGoneError, match="site-1 is not connected"):
        connection.call(Rpc.GET_TASK, {}, 5, once=True)
