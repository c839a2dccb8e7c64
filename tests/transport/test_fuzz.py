"""Malformed frames and metadata at a real server and relay: every call gets a clear status, nothing crashes
or hangs, and the rank keeps serving."""

from __future__ import annotations

import grpc
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcflare.rank_logger import RankLogger
from hpcflare.recipe import FedAvgRecipe
from hpcflare.runtime.relay import Relay
from hpcflare.runtime.server import FLServer
from hpcflare.transport.codec import pack_frame
from hpcflare.transport.grpc_server import SERVICE

CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
UNARY = ["Register", "Heartbeat", "GetTask", "Goodbye"]
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "site": st.sampled_from(["site-1", "nobody", "", "../x"]) | plain,
        "token": plain,
        "task_id": plain,
        "kind": st.sampled_from(["begin", "tensor", "data", "end"]),
        "params_type": st.sampled_from(["FULL", "DIFF", "PARTIAL", "X"]),
        "spec": plain,
        "o": plain,
        "t": plain,
        "ref": plain,
        "start": plain,
        "staged": plain,
        "timeout": plain,
        "partial": plain,
    },
)
payload = st.binary(max_size=300) | fields.map(lambda d: msgpack.packb(d, use_bin_type=True))
frame = st.binary(max_size=200) | st.tuples(fields, st.binary(max_size=100)).map(lambda hp: pack_frame(*hp))


@pytest.fixture(scope="module", params=["server", "relay"])
def rank(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    (root / "c.py").write_text("print(1)\n")
    job_dir = FedAvgRecipe(
        name="fuzz",
        model={"w": np.zeros(4, np.float32)},
        min_clients=1,
        num_rounds=1,
        train_script=root / "c.py",
        settings={"task_poll_timeout": 1},
    ).export(root / "jobs")
    log = RankLogger(job_dir.log_dir, request.param, request.param)
    host = FLServer(job_dir, log) if request.param == "server" else Relay(job_dir, "relay-x", log)
    host.grpc.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{host.grpc.port}")
    yield host, channel, job_dir
    channel.close()
    host.grpc.stop(0)


def _status(call) -> grpc.StatusCode | None:
    try:
        call()
        return None
    except grpc.RpcError as exc:
        return exc.code()


def _still_serving(channel) -> None:
    code = _status(
        lambda: channel.unary_unary(f"/{SERVICE}/Heartbeat")(msgpack.packb({"site": "x"}), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(UNARY), body=payload)
def test_malformed_unary_calls(rank, method, body):
    host, channel, job_dir = rank
    if method == "Register" and host.role == "relay":
        body = msgpack.packb({"site": "not-in-job"})  # a relay forwards valid registrations upstream
    code = _status(lambda: channel.unary_unary(f"/{SERVICE}/{method}")(body, timeout=5))
    assert code is None or code in CLEAR, code
    _still_serving(channel)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(frame, max_size=6))
def test_malformed_upload_streams(rank, frames):
    host, channel, job_dir = rank
    code = _status(lambda: channel.stream_unary(f"/{SERVICE}/Upload")(iter(frames), timeout=5))
    assert code in CLEAR, code
    _still_serving(channel)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payload)
def test_malformed_download_requests(rank, body):
    host, channel, job_dir = rank
    code = _status(lambda: list(channel.unary_stream(f"/{SERVICE}/Download")(body, timeout=5)))
    assert code in CLEAR, code
    _still_serving(channel)


def test_no_internal_errors_were_logged(rank):
    host, channel, job_dir = rank
    text = "".join(p.read_text() for p in job_dir.log_dir.glob("*.jsonl"))
    assert "internal_error" not in text
