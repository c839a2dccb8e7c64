"""One contract, every client transport: gRPC over loopback and the in-process transport of virtual clients
carry the same frames with the same limits, and hand the host's errors back to the caller."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.transport.api import UploadHeader
from hpcflare.transport.grpc_client import GrpcClientTransport
from hpcflare.transport.grpc_server import GrpcServer
from hpcflare.transport.inproc import InprocTransport
from tests.conftest import header as make_header
from tests.transport.test_grpc import SETTINGS, Handler, manifest


@pytest.fixture(params=["grpc", "inproc"])
def transport(request):
    handler = Handler()
    if request.param == "grpc":
        server = GrpcServer(handler, SETTINGS, RankLogger(None, "server", "server")).start()
        client = GrpcClientTransport(server.address, SETTINGS)
        yield handler, client
        client.close()
        server.stop()
    else:
        client = InprocTransport(handler, SETTINGS, "inproc:client-rank-1")
        yield handler, client
        client.close()


def test_unary_roundtrip_and_errors_reach_the_caller(transport):
    handler, client = transport
    assert client.call("GetTask", {"x": [1, 2]}, 5) == {"method": "GetTask", "echo": {"x": [1, 2]}}
    with pytest.raises(errors.HpcflareError, match="nope: GetTask"):
        client.call("GetTask", {"reject": True}, 5)


def test_download_reassembles_chunked_tensors_exactly(transport):
    handler, client = transport
    got = list(client.download({}, manifest(handler)))
    assert [bytes(b) for _, b in got] == handler.blobs
    assert all(len(b) > SETTINGS.chunk_size for b in handler.blobs)  # really chunked


def test_upload_streams_bounded_frames(transport):
    handler, client = transport
    reply = client.upload(make_header("a"), [("w", np.zeros(3000, dtype=np.float32))])
    assert (
        reply["frames"] == 1 + 1 + 1 + 12 + 1
    )  # begin, tensor spec, blob header, ceil(12000/1024) data, end
    assert handler.uploads[0]["site"] == "a"


def test_models_over_max_model_bytes_are_refused_both_ways(transport):
    handler, client = transport
    small = SETTINGS.replace(max_model_bytes=1000)
    client.settings = small
    with pytest.raises(errors.FrameTooLargeError, match="max_model_bytes"):
        list(client.download({}, manifest(handler)))
    with pytest.raises(errors.FrameTooLargeError, match="max_model_bytes"):
        client.upload(make_header("a"), [("w", np.zeros(3000, dtype=np.float32))])


def test_a_closed_inproc_transport_is_a_gone_peer():
    client = InprocTransport(Handler(), SETTINGS, "inproc:client-rank-1")
    client.close()
    with pytest.raises(errors.PeerGoneError, match="closed"):
        client.call("Heartbeat", {}, 5)


def test_a_report_larger_than_one_frame_header_arrives_whole():
    """A relay's partial over thousands of sites: its per-site table continues in 'more' frames, which the
    host folds back into the header before the tensors (both transports stream upload_frames)."""
    from hpcflare.transport.codec import unpack_frame
    from hpcflare.transport.streams import merge_report, upload_frames

    sites = {f"site-{i}": {"metrics": {"loss": i / 7}, "weight": float(i)} for i in range(5000)}
    header = make_header("relay-1", "PARTIAL", partial={"sites": sites, "rejected": {}, "weights": {}})
    frames = list(
        upload_frames(
            header, [("w", np.zeros(8, dtype=np.float32))], SETTINGS.replace(max_frame_bytes=1 << 20)
        )
    )
    begin, _ = unpack_frame(frames[0], 1 << 20)
    assert all(len(f) < 64 << 10 for f in frames) and begin["partial"]["sites"] == {}
    begin.pop("kind")
    received = UploadHeader.from_wire(begin)
    rest = merge_report(received, iter(frames[1:]), 1 << 20)
    assert (
        received.partial["sites"] == sites and header.partial["sites"] is sites
    )  # the caller's is untouched
    assert (
        unpack_frame(next(rest), 1 << 20)[0]["kind"] == "tensor"
    )  # the stream goes on where the report ended


def test_report_continuations_are_refused_outside_a_report_section():
    from hpcflare.transport.codec import pack_frame
    from hpcflare.transport.streams import merge_report

    for bad in (
        {"kind": "more", "section": "meta", "key": "x", "items": {}},
        {"kind": "more", "section": "partial", "key": "nope", "items": {}},
        {"kind": "more", "section": "partial", "key": "sites", "items": [1]},
    ):
        with pytest.raises(errors.MalformedMessageError, match="report continuation"):
            merge_report(make_header(partial={"sites": {}}), iter([pack_frame(bad)]), 1 << 20)
