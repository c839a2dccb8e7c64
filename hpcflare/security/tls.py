"""Mutual TLS for every gRPC channel, from a startup kit (see provision.py).

The server and relays require a client certificate signed by the project CA, and then also check that the
certificate's name is a participant of the project (transport level) and that it only acts as itself
(``RoundHost.authorize``). Clients verify the server's certificate against the same CA and its name
(``ssl_target_name_override`` = the server's / relay's participant name, so any host address works).

gRPC reports a refused handshake to the client only as "Socket closed"; ``explain_refusal`` repeats the
handshake with Python's ssl module to learn (and log) why, and the server learns it from gRPC core's own
log line, which ``HandshakeLogTap`` turns into a structured ``tls_refused`` event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import yaml

from hpcflare.errors import CertificateError, ConfigError

KIT_FILE = "kit.yaml"
# cryptography is imported only where certificates are inspected: plain-text jobs never load it


@dataclasses.dataclass
class StartupKit:
    path: Path
    project: str
    name: str
    role: str
    server: str
    participants: dict[str, str]
    policy: dict[str, Any]
    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    orgs: dict[str, str] = dataclasses.field(default_factory=dict)
    """Participant -> its org (provision's ``org``, default its own name)."""
    admin_roles: dict[str, str] = dataclasses.field(default_factory=dict)
    """Admin participant -> project_admin, org_admin, lead or member."""
    server_address: str = ""
    """HOST:PORT of the project's standing server (the server's first host name and the project's server_port)."""

    @classmethod
    def load(cls, path: str | Path) -> StartupKit:
        path = Path(path).resolve()  # ranks started elsewhere (another cwd, a batch job) find it too
        if not (path / KIT_FILE).is_file():
            raise ConfigError(
                f"no startup kit at {path} (missing {KIT_FILE}); create kits with `hpcflare provision "
                "project.yaml`, or set tls: off in job.yaml for a trusted single-user run"
            )
        try:
            data = yaml.safe_load((path / KIT_FILE).read_text())
            files = {
                n: (path / f).read_bytes()
                for n, f in (("root", "rootCA.pem"), ("cert", "cert.pem"), ("key", "key.pem"))
            }
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"startup kit {path} is incomplete or unreadable: {exc}") from None
        mode = (path / "key.pem").stat().st_mode & 0o077
        if mode:
            raise CertificateError(
                f"{path / 'key.pem'} is readable by group/others (mode {oct(mode)}); "
                f"run chmod 600 {path / 'key.pem'}"
            )
        return cls(
            path,
            str(data.get("project", "")),
            str(data["name"]),
            str(data.get("role", "client")),
            str(data.get("server", "server")),
            dict(data.get("participants") or {}),
            dict(data.get("policy") or {"allow_any_script": True}),
            files["root"],
            files["cert"],
            files["key"],
            {str(k): str(v) for k, v in (data.get("orgs") or {}).items()},
            {str(k): str(v) for k, v in (data.get("admin_roles") or {}).items()},
            str(data.get("server_address") or ""),
        )

    # ------------------------------------------------------------------ checks
    def self_check(self, now: dt.datetime | None = None) -> list[str]:
        """Problems with our own certificate that a peer will refuse; empty when it looks fine."""
        from cryptography import x509

        now = now or dt.datetime.now(dt.timezone.utc)
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        root = x509.load_pem_x509_certificate(self.root_pem)
        problems = []
        if now > cert.not_valid_after_utc:
            problems.append(
                f"certificate {self.path / 'cert.pem'} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if now < cert.not_valid_before_utc:
            problems.append(
                f"certificate {self.path / 'cert.pem'} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                "(check this node's clock)"
            )
        try:
            cert.verify_directly_issued_by(root)
        except Exception as exc:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError
            problems.append(
                f"certificate is not issued by the project CA in {self.path / 'rootCA.pem'} ({type(exc).__name__})"
            )
        if common_name(cert) != self.name:
            problems.append(f"certificate names {common_name(cert)!r}, but the kit is for {self.name!r}")
        return problems

    # ------------------------------------------------------------------ gRPC credentials
    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.root_pem, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_pem, self.key_pem, self.cert_pem)

    def channel_options(self, peer_name: str) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", peer_name), ("grpc.default_authority", peer_name)]

    def accepts(self, identity: str) -> bool:
        return identity in self.participants


def common_name(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The verified certificate name of the caller (None on an insecure channel)."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode("utf-8", "replace") if names else None


REFUSAL_HINTS = [  # most specific first
    (
        re.compile(r"hostname|IP address mismatch|doesn't match", re.I),
        "the server's certificate is for another name: the kit's 'server' entry must name the server participant",
    ),
    (
        re.compile(r"expired", re.I),
        "a certificate has expired: issue a fresh startup kit (hpcflare provision --add) "
        "or check the node clocks",
    ),
    (
        re.compile(
            r"unknown.ca|BAD_SIGNATURE|CERTIFICATE_VERIFY_FAILED|unable to get local issuer|self.signed", re.I
        ),
        "the certificate is not signed by this project's CA: the peer uses a startup kit from another project",
    ),
    (
        re.compile(r"PEER_DID_NOT_RETURN_A_CERTIFICATE|certificate required|NO_CERTIFICATE", re.I),
        "the peer sent no client certificate: it runs without TLS (tls: off) or without its startup kit",
    ),
    (
        re.compile(r"WRONG_VERSION_NUMBER|http request|record layer", re.I),
        "the peer does not speak TLS: one side has tls: off",
    ),
]


def hint_for(reason: str) -> str:
    for pattern, hint in REFUSAL_HINTS:
        if pattern.search(reason):
            return hint
    return "check that both sides use startup kits from the same `hpcflare provision` run"


def explain_refusal(address: str, kit: StartupKit, peer_name: str, timeout: float = 5.0) -> str | None:
    """Redo the TLS handshake with Python's ssl module; the reason it fails, or None if it succeeds."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2"])
    ctx.load_verify_locations(cadata=kit.root_pem.decode())
    ctx.load_cert_chain(str(kit.path / "cert.pem"), str(kit.path / "key.pem"))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=peer_name) as tls:
                tls.settimeout(timeout)
                try:  # TLS 1.3: the server judges our certificate after our side of the handshake ended;
                    if tls.recv(1):  # a gRPC server that accepted us speaks first (HTTP/2 SETTINGS)
                        return None
                except TimeoutError:
                    return None
                own = (
                    "; ".join(kit.self_check())
                    or "this certificate looks valid here: is the server's kit from the same project?"
                )
                return f"the server closed the connection right after the handshake: it refused our certificate ({own})"
    except ssl.SSLError as exc:
        return (
            f"{exc.reason or exc}: {exc.verify_message}"
            if getattr(exc, "verify_message", None)
            else f"{exc.reason or exc}"
        )
    except (OSError, ValueError):
        return None  # unreachable is not a certificate problem


TAP_ENABLED = False
"""Set by the rank launcher (a process of its own): only then may a server or relay take over fd 2."""


def handshake_tap(log: Any, kit: StartupKit | None) -> HandshakeLogTap | None:
    if kit is None or not TAP_ENABLED:
        return None
    return HandshakeLogTap(
        lambda reason: log.warning(
            "tls_refused", f"refused a TLS connection: {reason}; {hint_for(reason)}", reason=reason
        )
    )


class HandshakeLogTap:
    """Turns gRPC core's "Handshake failed" lines on stderr into ``tls_refused`` log events.

    Installed by server and relay processes (never in-process test runners): fd 2 is replaced by a pipe
    whose lines are copied to the original stderr unchanged.
    """

    PATTERN = re.compile(r"Handshake failed with (?:fatal )?error (\S+): (.*)")

    def __init__(self, on_refused: Callable[[str], None]) -> None:
        self.on_refused = on_refused
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, args=(read,), name="tls-log-tap", daemon=True)
        self._thread.start()

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                os.write(self._saved, line)
                match = self.PATTERN.search(line.decode("utf-8", "replace"))
                if match:
                    try:
                        self.on_refused(match.group(2).strip())
                    except Exception:  # noqa: BLE001 - logging must never break the pump
                        pass

    def close(self) -> None:
        os.dup2(self._saved, 2)
