"""A job's server rank behind the standing server's one port: real gRPC servers on loopback with mutual TLS, the
standing server's proxy in front of a job rank's transport. Who the rank sees, what passes (unary calls, both
streams, errors), and what is refused (another project's role, a forged identity, an unknown job)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from hpcflare import errors
from hpcflare.federation.job_proxy import JobProxy
from hpcflare.federation.store import FedJobState
from hpcflare.rank_logger import RankLogger
from hpcflare.security.provision import Project, provision
from hpcflare.security.tls import StartupKit
from hpcflare.settings import Settings
from hpcflare.transport.api import Peer, ServerHandler
from hpcflare.transport.codec import pack_meta, unpack_map
from hpcflare.transport.grpc_client import GrpcClientTransport
from hpcflare.transport.grpc_server import JOB_KEY, PEER_KEY, SERVICE, GrpcServer

SETTINGS = Settings(server_lost_timeout=2, rpc_timeout=5)
PROJECT = {
    "project": "consortium",
    "participants": [
        {"name": "server", "role": "server", "hosts": ["localhost", "127.0.0.1"]},
        {"name": "site-1", "role": "client"},
        {"name": "site-2", "role": "client"},
        {"name": "alice", "role": "admin", "admin_role": "lead"},
    ],
}


class Rank(ServerHandler):
    """A job's server rank as the transport sees it: says who called, streams frames, counts uploads."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.download_ended = threading.Event()

    def handle_unary(self, method: str, request: dict, peer: Peer) -> dict:
        self.peers.append(peer)
        if request.get("fail"):
            raise errors.UnknownClientError("site 'x' is not one of this job's sites (site-1)")
        return {"identity": peer.identity, "method": str(method)}

    def handle_download(self, request: dict, peer: Peer) -> Iterator[bytes]:
        self.peers.append(peer)
        try:
            yield from (bytes([i % 256]) * 1000 for i in range(int(request["frames"])))
        finally:
            self.download_ended.set()

    def handle_upload(self, frames: Iterator[bytes], peer: Peer) -> dict:
        self.peers.append(peer)
        data = list(frames)
        return {"frames": len(data), "bytes": sum(len(f) for f in data), "identity": peer.identity}


@pytest.fixture
def routed(tmp_path: Path):
    """The job rank's transport (server kit) on one port, the standing server's proxy on another."""
    kits = provision(Project.from_dict(PROJECT), tmp_path / "kits")
    server_kit = StartupKit.load(kits / "server")
    log = RankLogger(tmp_path / "logs", "server", "server")
    rank = Rank()
    job_server = GrpcServer(rank, SETTINGS, log, kit=server_kit).start()
    job = SimpleNamespace(state=FedJobState.RUNNING, address=f":{job_server.port}")
    host = SimpleNamespace(kit=server_kit, settings=SETTINGS, store=SimpleNamespace(jobs={"job-1": job}))
    proxy = JobProxy(host, threads=8)  # type: ignore[arg-type]
    front = grpc.server(ThreadPoolExecutor(max_workers=16))
    front.add_generic_rpc_handlers([proxy])
    port = front.add_secure_port("127.0.0.1:0", server_kit.server_credentials())
    front.start()
    yield SimpleNamespace(kits=kits, rank=rank, job=job, port=port, job_port=job_server.port)
    front.stop(0)
    proxy.close()
    job_server.stop(0)
    log.close()


def _client(routed, who: str, job: str = "job-1") -> GrpcClientTransport:
    return GrpcClientTransport(f"localhost:{routed.port}/{job}", SETTINGS, StartupKit.load(routed.kits / who))


def _channel(routed, who: str, port: int) -> grpc.Channel:
    kit = StartupKit.load(routed.kits / who)
    return grpc.secure_channel(
        f"localhost:{port}", kit.channel_credentials(), options=kit.channel_options("server")
    )


def test_the_rank_sees_the_site_and_its_address_not_the_proxy(routed):
    client = _client(routed, "site-1")
    try:
        assert client.call("Heartbeat", {"site": "site-1"}, 5) == {
            "identity": "site-1",
            "method": "Heartbeat",
        }
    finally:
        client.close()
    peer = routed.rank.peers[-1]
    assert peer.identity == "site-1" and peer.address.startswith("ipv4:127.0.0.1:")


def test_both_streams_pass_through_whole(routed):
    with _channel(routed, "site-2", routed.port) as channel:
        route = ((JOB_KEY, "job-1"),)
        frames = list(channel.unary_stream(f"/{SERVICE}/Download")(pack_meta({"frames": 50}), metadata=route))
        assert [f[0] for f in frames] == list(range(50)) and all(len(f) == 1000 for f in frames)
        sent = [bytes([7]) * 4096 for _ in range(300)]
        reply = unpack_map(channel.stream_unary(f"/{SERVICE}/Upload")(iter(sent), metadata=route, timeout=30))
    assert reply == {"frames": 300, "bytes": 300 * 4096, "identity": "site-2"}


def test_the_ranks_errors_reach_the_site_as_they_were(routed):
    client = _client(routed, "site-1")
    try:
        with pytest.raises(errors.HpcflareError, match="not one of this job's sites"):
            client.call("Register", {"site": "x", "fail": True}, 5)
    finally:
        client.close()


def test_a_forged_identity_counts_for_nothing(routed):
    """A site that names another in hpcflare-peer: through the proxy the proxy's own word replaces it; straight
    to the rank, only the server's own certificate may say who the caller is."""
    forged = ((JOB_KEY, "job-1"), (PEER_KEY, "site-2"))
    for port in (routed.port, routed.job_port):
        with _channel(routed, "site-1", port) as channel:
            reply = channel.unary_unary(f"/{SERVICE}/Heartbeat")(
                pack_meta({"site": "site-1"}), metadata=forged
            )
        assert unpack_map(reply)["identity"] == "site-1"


def test_only_sites_of_the_project_and_known_running_jobs_get_through(routed):
    with _channel(routed, "alice", routed.port) as channel:  # an admin's kit is not a site's
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(f"/{SERVICE}/Heartbeat")(pack_meta({}), metadata=((JOB_KEY, "job-1"),))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "alice" in refused.value.details()
    with _channel(routed, "site-1", routed.port) as channel:
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary(f"/{SERVICE}/Heartbeat")(pack_meta({}), metadata=((JOB_KEY, "job-9"),))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "job-9" in unknown.value.details()
    routed.job.state = (
        FedJobState.DONE
    )  # ended: the site is told it is gone, as a stopped server rank would be
    client = _client(routed, "site-1")
    try:
        with pytest.raises(errors.PeerGoneError, match="not serving"):
            client.call("Heartbeat", {"site": "site-1"}, 5)
    finally:
        client.close()
    assert len(routed.rank.peers) == 0


def test_one_site_holds_at_most_half_the_proxys_threads(routed):
    """A site that floods its job through the one port is told it is busy; the other sites go on."""
    route = ((JOB_KEY, "job-1"),)
    with _channel(routed, "site-1", routed.port) as flood, _channel(routed, "site-2", routed.port) as other:
        held = []
        for _ in range(4):  # threads=8: four calls of one site in flight at most
            call = flood.unary_stream(f"/{SERVICE}/Download")(pack_meta({"frames": 100000}), metadata=route)
            next(call)
            held.append(call)
        with pytest.raises(grpc.RpcError) as busy:
            flood.unary_unary(f"/{SERVICE}/Heartbeat")(pack_meta({}), metadata=route, timeout=10)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "site-1" in busy.value.details()
        reply = other.unary_unary(f"/{SERVICE}/Heartbeat")(pack_meta({}), metadata=route, timeout=10)
        assert unpack_map(reply)["identity"] == "site-2"
        for call in held:
            call.cancel()
        deadline = time.monotonic() + 30
        while True:  # its streams ended: its calls pass again
            try:
                reply = flood.unary_unary(f"/{SERVICE}/Heartbeat")(pack_meta({}), metadata=route, timeout=10)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.1)
        assert unpack_map(reply)["identity"] == "site-1"


def test_a_download_cancelled_by_the_site_is_cancelled_at_the_rank(routed):
    with _channel(routed, "site-1", routed.port) as channel:
        call = channel.unary_stream(f"/{SERVICE}/Download")(
            pack_meta({"frames": 100000}), metadata=((JOB_KEY, "job-1"),)
        )
        next(call)
        assert not routed.rank.download_ended.is_set()  # 100 MB the site will never read
        call.cancel()
    assert routed.rank.download_ended.wait(30), "the rank kept streaming to a site that had gone"


def _record(federation, job_id: str) -> dict:
    return json.loads((federation.server_dir / "ws" / "jobs" / job_id / "record.json").read_text())


@pytest.mark.parametrize("routing", ["proxy", "ports"])
def test_a_federated_job_through_the_one_port_or_its_own(federation, routing):
    """job_routing: proxy (the default) - sites reach the job through the standing server's port and the job's
    server rank listens on loopback only; ports - sites connect to the job's port themselves."""
    sites = ["site-1", "site-2"]
    federation.server_settings_yaml = {"job_routing": routing}
    federation.up(sites)
    job_id, _, _, weights = federation.run(federation.job(sites, rounds=2))
    np.testing.assert_allclose(weights, np.full(3, 3.0))  # (1 + 2) / 2, twice
    record = _record(federation, job_id)
    command = record["server_rank"]["command"]
    bind = command[command.index("--bind") + 1]
    log = (
        federation.site_dir("site-1") / "work" / "jobs" / job_id / "job" / "logs" / "site-1.log"
    ).read_text()
    if routing == "proxy":
        assert bind == "127.0.0.1"
        assert f"registered with server at {federation.address}/{job_id}" in log
    else:
        assert bind == "0.0.0.0"
        assert f"registered with server at localhost:{record['port']}" in log
