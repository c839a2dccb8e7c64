"""Mutual TLS on a real gRPC server on loopback: who gets in, who is refused, and what each side is told."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.security.tls import StartupKit, explain_refusal, hint_for
from hpcflare.settings import Settings
from hpcflare.transport.api import Peer, ServerHandler
from hpcflare.transport.grpc_client import GrpcClientTransport
from hpcflare.transport.grpc_server import GrpcServer
from tests.security.conftest import tamper

SETTINGS = Settings(server_lost_timeout=3, rpc_timeout=3)


class WhoAmI(ServerHandler):
    def __init__(self) -> None:
        self.peers: list[Peer] = []

    def handle_unary(self, method: str, request: dict, peer: Peer) -> dict:
        self.peers.append(peer)
        return {"identity": peer.identity}

    def handle_download(self, request: dict, peer: Peer) -> Iterator[bytes]:
        return iter(())

    def handle_upload(self, frames: Iterator[bytes], peer: Peer) -> dict:
        return {}


@pytest.fixture
def tls_server(kits: Path, tmp_path: Path):
    log = RankLogger(tmp_path / "logs", "server", "server")
    handler = WhoAmI()
    server = GrpcServer(handler, SETTINGS, log, kit=StartupKit.load(kits / "server")).start()
    yield server, handler, log
    server.stop(0)
    log.close()


def _client(server: GrpcServer, kit_dir: Path | None, peer_name: str = "server") -> GrpcClientTransport:
    return GrpcClientTransport(
        server.address, SETTINGS, StartupKit.load(kit_dir) if kit_dir else None, peer_name
    )


def test_project_member_gets_in_with_its_verified_name(kits: Path, tls_server):
    server, handler, _ = tls_server
    client = _client(server, kits / "site-1")
    try:
        assert client.call("Register", {"site": "site-1"}, 5) == {"identity": "site-1"}
        assert handler.peers[-1].identity == "site-1"
    finally:
        client.close()
    assert explain_refusal(server.address, StartupKit.load(kits / "site-1"), "server") is None


@pytest.mark.parametrize("how, reason", [("foreign", "certificate verify failed"), ("expired", "expired")])
def test_refused_handshake_is_explained_to_the_client(kits: Path, tls_server, how: str, reason: str):
    server, handler, _ = tls_server
    kit_dir = tamper(kits, "site-2", how)
    client = _client(server, kit_dir)
    try:
        with pytest.raises(errors.PeerGoneError):  # gRPC itself only says the socket closed
            client.call("Register", {"site": "site-2"}, 3)
    finally:
        client.close()
    assert handler.peers == []
    why = explain_refusal(server.address, StartupKit.load(kit_dir), "server")
    assert why is not None and reason in why.lower().replace("_", " ")
    assert ("another project" if how == "foreign" else "expired") in hint_for(why)


def test_plain_text_client_never_reaches_a_tls_server(tls_server):
    server, handler, _ = tls_server
    client = _client(server, None)
    try:
        with pytest.raises(errors.PeerGoneError):
            client.call("Register", {"site": "site-1"}, 3)
    finally:
        client.close()
    assert handler.peers == []


def test_name_outside_the_project_is_refused_and_logged(kits: Path, tls_server, tmp_path: Path):
    server, handler, log = tls_server
    client = _client(server, tamper(kits, "site-2", "unlisted"))
    try:
        with pytest.raises(
            errors.CertificateError, match="'intruder' is not a participant of project 'demo'"
        ):
            client.call("Register", {"site": "site-2"}, 3)
    finally:
        client.close()
    assert handler.peers == []
    log.close()
    text = (tmp_path / "logs" / "server.log").read_text()
    assert "tls_refused" in (tmp_path / "logs" / "server.jsonl").read_text() and "intruder" in text


def test_client_refuses_a_server_with_another_name(kits: Path, tls_server):
    server, _, _ = tls_server
    client = _client(server, kits / "site-1", peer_name="relay-1")  # expects relay-1, gets the server's cert
    try:
        with pytest.raises(errors.PeerGoneError):
            client.call("Register", {"site": "site-1"}, 3)
    finally:
        client.close()
    why = explain_refusal(server.address, StartupKit.load(kits / "site-1"), "relay-1")
    assert why is not None and "hostname mismatch" in why.lower(), why
    assert "another name" in hint_for(why)
