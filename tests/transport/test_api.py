"""The typed protocol: the upload header round-trips through the wire and is refused when malformed."""

from __future__ import annotations

import pytest

from hpcflare.errors import MalformedMessageError
from hpcflare.transport.api import UNARY_METHODS, Rpc, UpdateKind, UploadHeader
from hpcflare.transport.codec import pack_meta, unpack_meta


def wire(**changes):
    raw = UploadHeader(
        "site-1", "tok", "task-1", 2, UpdateKind.DIFF, {"NUM_STEPS_CURRENT_ROUND": 3}
    ).to_wire()
    raw.update(changes)
    return raw


def test_a_header_survives_the_wire():
    sent = UploadHeader(
        "relay-1", "t", "task", 5, UpdateKind.PARTIAL, partial={"sites": {"a": {}}, "weights": {}}
    )
    got = UploadHeader.from_wire(unpack_meta(pack_meta(sent.to_wire())))
    assert got == sent and got.params_type is UpdateKind.PARTIAL
    assert "staged" not in sent.to_wire()  # absent sections are not sent


def test_meta_keys_that_are_not_strings_are_dropped():
    assert UploadHeader("s", "", "t", 1, UpdateKind.FULL, {1: "x", "k": 2}).meta == {"k": 2}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"site": None}, "'site' must be a string"),
        ({"token": 7}, "'token' must be a string"),
        ({"round": "2"}, "'round' must be an integer"),
        ({"round": True}, "'round' must be an integer"),
        ({"params_type": "HALF"}, "params_type must be one of"),
        ({"meta": [1]}, "'meta' must be a mapping"),
        ({"staged": "models/x"}, "'staged' must be a mapping"),
        ({"partial": 3}, "'partial' must be a mapping"),
        ({"manifest": []}, "unknown field"),
    ],
)
def test_a_malformed_header_is_refused_naming_the_field(changes, message):
    with pytest.raises(MalformedMessageError, match=message):
        UploadHeader.from_wire(wire(**changes))


def test_a_copy_shares_nothing_with_the_original():
    original = UploadHeader("s", "", "t", 1, UpdateKind.FULL, swarm={"accepted": {"a": {"loss": 1}}})
    copy = original.copy()
    copy.swarm["accepted"]["b"] = {}
    assert original.swarm == {"accepted": {"a": {"loss": 1}}}


def test_rpc_names_are_the_service_methods():
    assert {str(m) for m in UNARY_METHODS} == {
        "Register",
        "Heartbeat",
        "GetTask",
        "Goodbye",
        "Track",
        "Exchange",
        "MapModel",
    }
    assert Rpc("Upload") is Rpc.UPLOAD and Rpc.DOWNLOAD not in UNARY_METHODS
