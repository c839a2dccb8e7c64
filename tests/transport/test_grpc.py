"""The gRPC transport against a real server on loopback: chunking, resume, limits, errors, dead peers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.settings import Settings
from hpcflare.transport import streams
from hpcflare.transport.api import ServerHandler
from hpcflare.transport.codec import TensorSpec, encode_tensor, iter_chunks, pack_frame, unpack_frame
from hpcflare.transport.grpc_client import GrpcClientTransport
from hpcflare.transport.grpc_server import MAX_WINDOW, MIN_WINDOW, GrpcServer, upload_window
from tests.conftest import header as make_header

SETTINGS = Settings(
    chunk_size=1024,
    max_frame_bytes=4096,
    server_lost_timeout=3,
    stream_idle_timeout=1.0,
    stream_timeout=10,
    heartbeat_interval=1,
    heartbeat_timeout=5,
    task_poll_timeout=1,
)


class Handler(ServerHandler):
    def __init__(self) -> None:
        self.blobs = [encode_tensor(f"t{i}", np.arange(700 * (i + 1), dtype=np.float32))[0] for i in range(3)]
        self.fail_once_at: int | None = None
        self.stall = False
        self.uploads: list[dict] = []

    def handle_unary(self, method: str, request: dict, peer: str) -> dict:
        if request.get("reject"):
            raise errors.UpdateRejectedError("nope: " + method)
        return {"method": method, "echo": request}

    def handle_download(self, request: dict, peer: str) -> Iterator[bytes]:
        index, offset = request["start"]
        sent = 0
        for i in range(index, len(self.blobs)):
            for off, piece in iter_chunks(self.blobs[i], SETTINGS.chunk_size, offset if i == index else 0):
                if self.stall:
                    time.sleep(5)
                if self.fail_once_at is not None and sent == self.fail_once_at:
                    self.fail_once_at = None
                    raise errors.StreamTimeoutError("injected mid-stream failure")
                sent += 1
                yield pack_frame({"t": i, "o": off}, piece)

    def handle_upload(self, frames: Iterator[bytes], peer: str) -> dict:
        heads = [unpack_frame(f, SETTINGS.max_frame_bytes)[0] for f in frames]
        self.uploads.append(heads[0])
        return {"frames": len(heads)}


@pytest.fixture
def served():
    handler = Handler()
    server = GrpcServer(handler, SETTINGS, RankLogger(None, "server", "server")).start()
    client = GrpcClientTransport(server.address, SETTINGS)
    yield handler, server, client
    client.close()
    server.stop(0)


def manifest(handler: Handler) -> list[TensorSpec]:
    return [TensorSpec(f"t{i}", "F32", (700 * (i + 1),), len(b)) for i, b in enumerate(handler.blobs)]


def test_unary_roundtrip_and_typed_errors(served):
    handler, server, client = served
    assert client.call("GetTask", {"x": [1, 2]}, 5) == {"method": "GetTask", "echo": {"x": [1, 2]}}
    with pytest.raises(errors.MalformedMessageError, match="nope: GetTask"):
        client.call("GetTask", {"reject": True}, 5)


def test_download_reassembles_chunks_exactly(served):
    handler, server, client = served
    got = list(client.download({}, manifest(handler)))
    assert [bytes(b) for _, b in got] == handler.blobs
    assert all(len(b) > SETTINGS.chunk_size for b in handler.blobs)  # really chunked


def test_download_resumes_after_mid_stream_failure(served):
    handler, server, client = served
    handler.fail_once_at = 5  # fails inside the second tensor
    got = list(client.download({}, manifest(handler)))
    assert [bytes(b) for _, b in got] == handler.blobs


def test_stalled_download_times_out_instead_of_hanging(served):
    handler, server, client = served
    handler.stall = True
    t0 = time.monotonic()
    with pytest.raises(errors.StreamTimeoutError, match="stream_idle_timeout"):
        list(client.download({}, manifest(handler)))
    assert time.monotonic() - t0 < 15


def test_upload_streams_tensors_in_bounded_frames(served):
    handler, server, client = served
    reply = client.upload(make_header("a"), [("w", np.zeros(3000, dtype=np.float32))])
    assert (
        reply["frames"] == 1 + 1 + 1 + 12 + 1
    )  # begin, tensor spec, blob header, ceil(12000/1024) data, end
    assert handler.uploads[0]["site"] == "a"


def test_oversized_frame_is_refused_and_server_keeps_serving(served):
    handler, server, client = served
    raw = client._upload.future(iter([b"x" * (SETTINGS.max_frame_bytes * 2)]), timeout=5)
    with pytest.raises(Exception) as info:
        raw.result()
    from hpcflare.transport.grpc_client import translate

    assert isinstance(translate(info.value, "Upload", server.address), errors.FrameTooLargeError)
    assert client.call("Heartbeat", {}, 5)["method"] == "Heartbeat"


def test_dead_server_is_a_clear_peer_gone_error(served):
    handler, server, client = served
    server.stop(0)
    with pytest.raises(errors.PeerGoneError, match="unreachable.*is the server rank alive"):
        client.call("Heartbeat", {}, 2)


def test_a_claimed_3_gib_tensor_costs_no_memory_until_its_bytes_arrive(served):
    """A manifest announcing one 3 GiB tensor (over 2 GiB, under max_model_bytes) whose stream then goes wrong:
    the client fails with the cause, and the receive buffer was never touched beyond what arrived, so the claim
    cost (almost) no memory (the buffer is not zero-filled up front)."""
    import psutil

    handler, server, client = served
    huge = TensorSpec("embed", "F32", (3 << 28,), (3 << 30) + 64)
    rss = psutil.Process().memory_info().rss
    with pytest.raises(
        (errors.PeerGoneError, errors.MalformedMessageError), match="ended early|unexpected frame"
    ):
        list(client.download({}, [huge]))  # the handler streams its own small blobs, then frames for tensor 1
    assert psutil.Process().memory_info().rss - rss < 256 << 20


class _Gated(ServerHandler):
    """Reads an upload's first frame, then nothing until released: a stream waiting for an upload slot."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def handle_unary(self, method: str, request: dict, peer: str) -> dict:
        return {}

    def handle_download(self, request: dict, peer: str) -> Iterator[bytes]:
        return iter(())

    def handle_upload(self, frames: Iterator[bytes], peer: str) -> dict:
        next(frames)
        self.release.wait(30)
        return {"frames": 1 + sum(1 for _ in frames)}


def _bytes_sent_while_waiting(monkeypatch, budget: int, children: int) -> tuple[int, int, dict]:
    """Bytes of payload the client got off its hands while the server did not read, the server's window."""
    chunk = 64 << 10
    settings = Settings(chunk_size=chunk, upload_buffer_bytes=budget)
    handler = _Gated()
    server = GrpcServer(handler, settings, RankLogger(None, "server", "server"), children=children).start()
    client = GrpcClientTransport(server.address, settings)
    pieces = [0]
    real = streams.iter_chunks

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        for item in real(*args, **kwargs):
            pieces[0] += 1
            yield item

    monkeypatch.setattr(streams, "iter_chunks", counted)
    reply: dict = {}
    sender = threading.Thread(
        target=lambda: reply.update(client.upload(make_header("a"), [("w", np.zeros(16 << 20, np.uint8))]))
    )
    sender.start()
    try:
        last, deadline = -1, time.monotonic() + 10
        while pieces[0] != last and time.monotonic() < deadline:  # until the flow-control window stops it
            last = pieces[0]
            time.sleep(0.5)
        return last * chunk, server.upload_window, reply
    finally:
        handler.release.set()
        sender.join(30)
        client.close()
        server.stop(0)


def test_a_waiting_upload_buffers_no_more_than_its_share_of_upload_buffer_bytes(monkeypatch):
    assert upload_window(256 << 20, 4) == MAX_WINDOW and upload_window(256 << 20, 10_000) == MIN_WINDOW
    assert upload_window(256 << 20, 128) == 2 << 20
    narrow, window, _ = _bytes_sent_while_waiting(monkeypatch, budget=1 << 20, children=16)
    assert window == 64 << 10
    assert narrow <= 2 * window + (256 << 10)
    wide, window, reply = _bytes_sent_while_waiting(monkeypatch, budget=8 << 20, children=1)
    assert window == 8 << 20 and window // 2 <= wide <= 2 * window
    assert (
        reply["frames"] == 1 + 1 + 1 + 256 + 1
    )  # nothing lost while it waited: begin, spec, blob header, data, end


def test_a_saturated_server_tells_its_handler_how_long_no_call_could_be_heard():
    """Every worker busy: heartbeats wait or are refused, so the host must not count that time as its
    members' silence (RoundHost gives it back); the server reports how long it lasted."""

    class Slow(Handler):
        def __init__(self) -> None:
            super().__init__()
            self.saturated: list[float] = []

        def handle_unary(self, method: str, request: dict, peer: str) -> dict:
            time.sleep(1.5)
            return {}

        def on_saturated(self, seconds: float) -> None:
            self.saturated.append(seconds)

    handler = Slow()
    settings = SETTINGS.replace(server_threads=4, max_anonymous_streams=1)
    server = GrpcServer(handler, settings, RankLogger(None, "server", "server")).start()
    client = GrpcClientTransport(f"127.0.0.1:{server.port}", settings)
    try:
        calls = [threading.Thread(target=lambda: client.call("Heartbeat", {}, 10)) for _ in range(6)]
        for t in calls:
            t.start()
        for t in calls:
            t.join()
        assert handler.saturated and max(handler.saturated) >= 1.0
    finally:
        client.close()
        server.stop(0)


def test_anonymous_streams_must_leave_the_control_share_of_threads():
    from hpcflare.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"max_anonymous_streams \(32\) must be <= server_threads / 4 \(16\)"
    ):
        Settings().replace(max_anonymous_streams=32)


def test_one_site_cannot_hold_more_than_max_calls_per_site_while_others_are_served():
    """A member (valid token) holding many long calls gets the ones beyond its cap refused as busy (logged once);
    another site's call and the same site's next call after one ends are served."""

    class LongPolls(Handler):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def vouches(self, site: str, token: str) -> bool:
            return token == f"token-{site}"

        def handle_unary(self, method: str, request: dict, peer: str) -> dict:
            if request.get("hold"):
                self.release.wait(20)
            return {"site": request.get("site")}

    handler = LongPolls()
    settings = SETTINGS.replace(server_threads=32, max_calls_per_site=3, rpc_timeout=20)
    log = RankLogger(None, "server", "server")
    warnings: list[str] = []
    log.listeners.append(lambda event: warnings.append(event["event"]))
    server = GrpcServer(handler, settings, log).start()
    client = GrpcClientTransport(f"127.0.0.1:{server.port}", settings)
    rogue = {"site": "site-1", "token": "token-site-1", "hold": True}
    try:
        held = [threading.Thread(target=client.call, args=("GetTask", rogue, 20)) for _ in range(3)]
        for t in held:
            t.start()
        time.sleep(0.5)
        for _ in range(2):
            with pytest.raises(errors.ServerBusyError, match=r"site-1 has 3 calls .*max_calls_per_site"):
                client.call("GetTask", rogue, 5)
        assert client.call("Heartbeat", {"site": "site-2", "token": "token-site-2"}, 5) == {"site": "site-2"}
        # a forged token is not counted against site-1 (nor refused as busy): the handler judges it
        assert client.call("Heartbeat", {"site": "site-1", "token": "forged"}, 5) == {"site": "site-1"}
        handler.release.set()
        for t in held:
            t.join(10)
        assert client.call("Heartbeat", {"site": "site-1", "token": "token-site-1"}, 5) == {"site": "site-1"}
        assert warnings.count("calls_refused") == 1
    finally:
        handler.release.set()
        client.close()
        server.stop(0)
