"""Resource exhaustion: anonymous streams are dropped after auth_timeout, a busy server's refusals are
retried (not fatal), and a stopped client's half-open upload is cancelled once its heartbeat lapses instead
of holding an upload slot for the whole stream_idle_timeout. Real gRPC servers and processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.recipe import FedAvgRecipe
from hpcflare.runtime.server import FLServer
from hpcflare.settings import Settings
from hpcflare.transport.api import ServerHandler
from hpcflare.transport.grpc_client import RETRYABLE, GrpcClientTransport
from hpcflare.transport.grpc_server import SERVICE, GrpcServer
from tests.conftest import events, wait_until


def test_an_upload_stream_that_never_speaks_is_dropped_after_auth_timeout(tmp_path):
    (tmp_path / "c.py").write_text("print(1)\n")
    job = FedAvgRecipe(
        name="anon",
        model={"w": np.zeros(4, np.float32)},
        min_clients=1,
        num_rounds=1,
        train_script=tmp_path / "c.py",
        settings={"auth_timeout": 1},
    ).export(tmp_path / "jobs")
    server = FLServer(job, RankLogger(job.log_dir, "server", "server"))
    server.grpc.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc.port}")
    silent = threading.Event()

    def nothing() -> Iterator[bytes]:  # a stream that opens and never sends a frame
        silent.wait(60)
        yield from ()

    try:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            channel.stream_unary(f"/{SERVICE}/Upload")(nothing(), timeout=30)
        assert info.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - t0 < 5
        stalls = [e for e in events(job.root, "server") if e["event"] == "transfer_stalled"]
        assert stalls and "settings.auth_timeout=1" in stalls[0]["msg"]
    finally:
        silent.set()
        channel.close()
        server.grpc.stop(0)


def test_one_host_cannot_hold_more_than_max_anonymous_streams(tmp_path):
    (tmp_path / "c.py").write_text("print(1)\n")
    job = FedAvgRecipe(
        name="flood",
        model={"w": np.zeros(4, np.float32)},
        min_clients=1,
        num_rounds=1,
        train_script=tmp_path / "c.py",
        settings={"auth_timeout": 20, "max_anonymous_streams": 2},
    ).export(tmp_path / "jobs")
    server = FLServer(job, RankLogger(job.log_dir, "server", "server"))
    server.grpc.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc.port}")
    silent = threading.Event()

    def nothing() -> Iterator[bytes]:
        silent.wait(60)
        yield from ()

    upload = channel.stream_unary(f"/{SERVICE}/Upload")
    held = [upload.future(nothing(), timeout=30) for _ in range(2)]
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            upload(nothing(), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - t0 < 5
        assert "busy" in info.value.details()  # a real client reads this as ServerBusyError and retries
        assert any(e["event"] == "streams_refused" for e in events(job.root, "server"))
    finally:
        silent.set()
        for call in held:
            call.cancel()
        channel.close()
        server.grpc.stop(0)


class _Blocking(ServerHandler):
    def __init__(self) -> None:
        self.release = threading.Event()

    def handle_unary(self, method, request, peer):
        self.release.wait(30)
        return {}

    def handle_download(self, request, peer):
        return iter(())

    def handle_upload(self, frames, peer):
        return {}


def test_concurrent_call_limit_is_a_retryable_busy_error():
    settings = Settings(server_threads=1)  # gRPC admits 4 x server_threads calls at once
    handler = _Blocking()
    server = GrpcServer(handler, settings, RankLogger(None, "server", "server")).start()
    clients = [GrpcClientTransport(server.address, settings) for _ in range(5)]
    busy = [threading.Thread(target=c.call, args=("GetTask", {}, 30), daemon=True) for c in clients[:4]]
    try:
        for t in busy:
            t.start()
        time.sleep(1.0)
        with pytest.raises(errors.ServerBusyError, match="concurrent-call limit") as info:
            clients[4].call("GetTask", {}, 5)
        assert isinstance(info.value, RETRYABLE)
        handler.release.set()
        for t in busy:
            t.join(10)
        assert clients[4].call("GetTask", {}, 5) == {}
    finally:
        handler.release.set()
        for c in clients:
            c.close()
        server.stop(0)


STALLING = """
import os, sys, time
import hpcflare.client as flare

class Stalling(dict):
    def items(self):
        for i, kv in enumerate(super().items()):
            if i == 1:
                open("stalled", "w").close()
                time.sleep(3600)  # the upload stops after its first tensor; the test then SIGSTOPs us
            yield kv

flare.init()
while flare.is_running():
    model = flare.receive()
    params = {k: v + 1 for k, v in model.params.items()}
    if flare.get_site_name() == "site-3":
        params = Stalling(params)
    flare.send(flare.FLModel(params=params))
"""


def test_stopped_client_mid_upload_frees_its_slot_when_its_heartbeat_lapses(make_recipe, local_env):
    model = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    run = make_recipe(
        STALLING,
        model=model,
        n_clients=3,
        min_clients=2,
        num_rounds=1,
        settings={
            "stream_idle_timeout": 30,
            "stream_timeout": 60,
            "round_timeout": 60,
            "shared_memory": False,
        },
    ).execute(local_env)  # a real stream to stall
    wait_until((run.job_dir.root / "sites" / "site-3" / "stalled").exists, "site-3's upload")
    pid = run.client_pid("site-3")
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        run.get_result(timeout=60)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    server = events(run.job_dir.root, "server")
    cancelled = [e for e in server if e["event"] == "upload_cancelled"]
    assert cancelled and cancelled[0]["site"] == "site-3"
    assert took < 20  # heartbeat_timeout (3 s) and a little, not stream_idle_timeout (30 s)
    assert not [e for e in server if e["event"] == "transfer_stalled"]
