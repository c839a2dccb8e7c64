"""Denial of service with default settings: one host holding as many idle upload streams as it can never starves
the honest sites' control calls or transfers; nobody is declared dead for the server's refusals."""

from __future__ import annotations

import json
import threading

import grpc
import numpy as np

from hpcflare.transport.grpc_server import SERVICE
from tests.conftest import HELLO_MODEL, SLOW, events, load_result, wait_until


class Flood:
    """Keeps ``streams`` upload calls open on the server at all times, each sending nothing, re-opening every one
    the server refuses or cuts (what a hostile or broken host on the network does)."""

    def __init__(self, address: str, streams: int) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stop = threading.Event()
        self.opened = 0
        self.threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(streams)]

    def _silence(self):
        self.stop.wait()
        return
        yield b""

    def _hold(self) -> None:
        upload = self.channel.stream_unary(f"/{SERVICE}/Upload")
        while not self.stop.is_set():
            self.opened += 1
            try:
                upload(self._silence(), timeout=30)
            except (grpc.RpcError, ValueError):  # refused or cut; ValueError: the channel closed at the end
                self.stop.wait(0.05)

    def __enter__(self) -> Flood:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.channel.close()


def test_idle_stream_flood_at_the_caps_does_not_kill_the_job(make_recipe, local_env):
    run = make_recipe(
        SLOW, n_clients=2, num_rounds=3, train_args="1", settings={"registration_timeout": 60}
    ).execute(local_env)
    server_file = run.job_dir.rendezvous_dir / "server.json"
    wait_until(server_file.exists, "the server's address", timeout=60)
    address = json.loads(server_file.read_text())["address"]
    with Flood(address, streams=200) as flood:  # far beyond max_anonymous_streams and the thread pool
        result = load_result(run.get_result(timeout=240))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 3)
    server = events(run.job_dir.root, "server")
    assert flood.opened > 200  # the flood kept coming back
    assert [e for e in server if e["event"] == "streams_refused"]
    assert not [e for e in server if e["event"] == "client_dead"]
    for e in [e for e in server if e["event"] == "round_completed"]:
        assert sorted(e["accepted"]) == ["site-1", "site-2"]
