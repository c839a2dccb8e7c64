"""``hpcflare provision project.yaml``: a root CA plus one startup kit per participant.

    project.yaml                            <out>/<project>/
      project: demo                           ca/rootCA.pem, ca/rootCA.key (0600; stays with the provisioner)
      valid_days: 365                         <name>/rootCA.pem   the project's trust anchor
      participants:                           <name>/cert.pem     CN = SAN = the participant's name
        - {name: server, role: server}        <name>/key.pem      0600
        - {name: relay-1, role: relay}        <name>/kit.yaml     name, role, project, server name,
        - {name: site-1, role: client,                            participants (server/relays), policy
           allowed_scripts: [client.py]}

A site's kit is all it needs to join: its own key never leaves it, the CA key never leaves the provisioner.
A client's ``allowed_scripts`` (paths, hashed at provision time) make it refuse any other training script;
without the key, ``allow_any_script`` (default true) decides.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write, publish_dir
from hpcflare.job import SITE_NAME
from hpcflare.security.certs import issue, new_ca, pem_cert, pem_key
from hpcflare.security.policy import script_digest
from hpcflare.security.tls import KIT_FILE

ROLES = ("server", "relay", "client", "admin")
ADMIN_ROLES = ("project_admin", "org_admin", "lead", "member")
"""An admin's role on a standing server (see hpcflare.federation.roles), NVFlare's four."""


@dataclasses.dataclass
class Participant:
    name: str
    role: str
    hosts: list[str] = dataclasses.field(default_factory=list)
    """Extra DNS names / IPs for the certificate (servers and relays reached by hostname)."""
    allowed_scripts: list[str] | None = None
    allow_any_script: bool = True
    org: str | None = None
    """The institution this participant belongs to (an org_admin manages its org's jobs); default: its name."""
    admin_role: str | None = None
    """Role admin only: project_admin, org_admin, lead or member."""


@dataclasses.dataclass
class Project:
    project: str
    participants: list[Participant]
    valid_days: int = 365
    server_port: int = 8002
    """The standing server's port (hpcflare federation serve): admin kits name the server as hosts[0]:port."""

    @property
    def server(self) -> Participant:
        return next(p for p in self.participants if p.role == "server")

    @classmethod
    def from_dict(cls, data: Any, source: str = "project.yaml") -> Project:
        if not isinstance(data, dict) or not isinstance(data.get("project"), str):
            raise ConfigError(f"{source}: expected a mapping with a 'project' name and a 'participants' list")
        if not SITE_NAME.match(data["project"]):
            raise ConfigError(f"{source}: invalid project name {data['project']!r}")
        people = []
        for i, entry in enumerate(data.get("participants") or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{source}: participants[{i}] needs a 'name'")
            unknown = set(entry) - {f.name for f in dataclasses.fields(Participant)}
            if unknown:
                raise ConfigError(f"{source}: participants[{i}] has unknown key(s) {sorted(unknown)}")
            p = Participant(**{"role": "client", **entry})
            if not SITE_NAME.match(p.name):
                raise ConfigError(
                    f"{source}: invalid participant name {p.name!r}: letters, digits, '_', '.', '-'"
                )
            if p.role not in ROLES:
                raise ConfigError(f"{source}: participant {p.name} has role {p.role!r}; use one of {ROLES}")
            if p.role == "admin" and p.admin_role not in ADMIN_ROLES:
                raise ConfigError(
                    f"{source}: admin {p.name} needs an admin_role, one of {ADMIN_ROLES} (got {p.admin_role!r})"
                )
            if p.role != "admin" and p.admin_role is not None:
                raise ConfigError(
                    f"{source}: {p.name} has an admin_role but its role is {p.role!r}, not admin"
                )
            if p.org is not None and not (isinstance(p.org, str) and SITE_NAME.match(p.org)):
                raise ConfigError(f"{source}: participant {p.name} has an invalid org {p.org!r}")
            people.append(p)
        names = [p.name for p in people]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: participant names must be unique")
        if sum(p.role == "server" for p in people) != 1:
            raise ConfigError(f"{source}: exactly one participant must have role 'server'")
        days = data.get("valid_days", 365)
        if not isinstance(days, int) or days < 1:
            raise ConfigError(f"{source}: valid_days must be a positive integer")
        port = data.get("server_port", 8002)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{source}: server_port must be a port number, got {port!r}")
        return cls(data["project"], people, days, port)

    @classmethod
    def load(cls, path: str | Path) -> Project:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"project file {path} not found")
        try:
            return cls.from_dict(yaml.safe_load(path.read_text()), str(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def directory(project: Project) -> dict[str, Any]:
    """Who is who, as every kit carries it: roles, orgs, and the admins' roles (a standing server checks them)."""
    server = project.server
    return {
        "server_address": f"{server.hosts[0]}:{project.server_port}" if server.hosts else "",
        "participants": {p.name: p.role for p in project.participants},
        "orgs": {p.name: p.org or p.name for p in project.participants},
        "admin_roles": {p.name: p.admin_role for p in project.participants if p.role == "admin"},
    }


def write_private(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only (0600) from the first byte on."""
    atomic_write(path, data, mode=0o600)


def write_kit(
    kit_dir: Path,
    project: Project,
    who: Participant,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    base: Path,
) -> Path:
    kit_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(kit_dir, 0o700)
    atomic_write(kit_dir / "rootCA.pem", pem_cert(ca_cert))
    atomic_write(kit_dir / "cert.pem", pem_cert(cert))
    write_private(kit_dir / "key.pem", pem_key(key))
    kit: dict[str, Any] = {
        "project": project.project,
        "name": who.name,
        "role": who.role,
        "server": project.server.name,
    }
    # the names a server/relay (or a client's swarm peer host) accepts certificates for
    kit.update(directory(project))
    if who.role == "client":
        scripts = []
        for s in who.allowed_scripts or []:
            path = (base / s).resolve()
            if not path.is_file():
                raise ConfigError(
                    f"participant {who.name}: allowed script {s} not found (relative to {base})"
                )
            scripts.append({"name": path.name, "sha256": script_digest(path)})
        kit["policy"] = {
            "allow_any_script": bool(who.allow_any_script) and who.allowed_scripts is None,
            "allowed_scripts": scripts,
        }
    atomic_write(kit_dir / KIT_FILE, yaml.safe_dump(kit, sort_keys=False))
    return kit_dir


def provision(project: Project, out: str | Path, base: str | Path = ".") -> Path:
    """Create ``out/<project>/``: the CA (key 0600) and one startup kit per participant."""
    final = Path(out) / project.project
    if (final / "ca" / "rootCA.key").exists():
        raise ConfigError(
            f"{final} is already provisioned; remove it, or use --add NAME to issue one more kit"
        )
    if final.exists() and any(final.iterdir()):
        raise ConfigError(f"{final} exists and is not empty; remove it or provision into another -o folder")
    # built under a temporary name and renamed at the end: a failure (a missing allowed script) leaves nothing
    root = Path(out) / f".{project.project}.provisioning-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    try:
        _provision_into(root, project, base)
        if final.exists():
            final.rmdir()
        publish_dir(root, final)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return final


def _provision_into(root: Path, project: Project, base: str | Path) -> None:
    (root / "ca").mkdir(parents=True, exist_ok=True)
    os.chmod(root / "ca", 0o700)
    ca_key, ca_cert = new_ca(project.project, project.valid_days)
    atomic_write(root / "ca" / "rootCA.pem", pem_cert(ca_cert))
    write_private(root / "ca" / "rootCA.key", pem_key(ca_key))
    atomic_write(root / "ca" / "project.yaml", yaml.safe_dump(dataclasses.asdict(project), sort_keys=False))
    for who in project.participants:
        key, cert = issue(ca_key, ca_cert, who.name, who.hosts, project.valid_days)
        write_kit(root / who.name, project, who, ca_cert, key, cert, Path(base))


def load_ca(root: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Project]:
    try:
        key = serialization.load_pem_private_key((root / "ca" / "rootCA.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((root / "ca" / "rootCA.pem").read_bytes())
        project = Project.from_dict(yaml.safe_load((root / "ca" / "project.yaml").read_text()))
    except FileNotFoundError as exc:
        raise ConfigError(f"{root} has no CA ({exc.filename}); run hpcflare provision first") from None
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, cert, project


def add_participant(root: str | Path, who: Participant, base: str | Path = ".") -> Path:
    """Issue one more kit from an existing CA and record the participant in the project."""
    root = Path(root)
    ca_key, ca_cert, project = load_ca(root)
    if any(p.name == who.name for p in project.participants):
        raise ConfigError(f"{who.name} is already a participant of {project.project}")
    project.participants.append(who)
    Project.from_dict(dataclasses.asdict(project))  # validates the new name/role
    atomic_write(root / "ca" / "project.yaml", yaml.safe_dump(dataclasses.asdict(project), sort_keys=False))
    key, cert = issue(ca_key, ca_cert, who.name, who.hosts, project.valid_days)
    kit = write_kit(root / who.name, project, who, ca_cert, key, cert, Path(base))
    for p in project.participants:  # servers and relays learn the new name
        kit_file = root / p.name / KIT_FILE
        if kit_file.is_file():
            data = yaml.safe_load(kit_file.read_text())
            data.update(directory(project))
            atomic_write(kit_file, yaml.safe_dump(data, sort_keys=False))
    return kit


def job_project(
    job_id: str, clients: Sequence[str], relays: Sequence[str], hosts: Sequence[str] = ()
) -> Project:
    """The throw-away project of one batch job: a server, its relays and its client sites."""
    people = [Participant("server", "server", list(hosts))]
    people += [Participant(r, "relay", list(hosts)) for r in relays]
    people += [Participant(c, "client") for c in clients]
    return Project(project=job_id[:64] if SITE_NAME.match(job_id[:64]) else "job", participants=people)
