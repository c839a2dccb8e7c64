"""Provisioned projects and tampered kits (expired, foreign CA, unlisted name) for the TLS tests."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from hpcflare.security.provision import Project, issue, load_ca, new_ca, provision, write_private

PROJECT = {
    "project": "demo",
    "valid_days": 30,
    "participants": [
        {"name": "server", "role": "server"},
        {"name": "relay-1", "role": "relay"},
        {"name": "site-1"},
        {"name": "site-2"},
    ],
}


@pytest.fixture
def kits(tmp_path: Path) -> Path:
    """A freshly provisioned project: <tmp>/ws/demo/{ca,server,relay-1,site-1,site-2}."""
    return provision(Project.from_dict(PROJECT), tmp_path / "ws")


def _store(kit: Path, key, cert) -> None:
    (kit / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        kit / "key.pem",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def tamper(kits: Path, site: str, how: str) -> Path:
    """Replace ``site``'s certificate: 'expired', 'foreign' (another project's CA, whole kit), 'unlisted'
    (project CA, name not in the project), 'other-site' (the certificate of site-1)."""
    kit = kits / site
    ca_key, ca_cert, _ = load_ca(kits)
    if how == "expired":
        _store(
            kit,
            *issue(
                ca_key,
                ca_cert,
                site,
                valid_days=1,
                not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3),
            ),
        )
    elif how == "foreign":
        other_key, other_ca = new_ca("other", 30)
        _store(kit, *issue(other_key, other_ca, site))
        (kit / "rootCA.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    elif how == "unlisted":
        _store(kit, *issue(ca_key, ca_cert, "intruder"))
        text = (kit / "kit.yaml").read_text().replace(f"name: {site}", "name: intruder")
        (kit / "kit.yaml").write_text(text)
    elif how == "other-site":
        shutil.copy(kits / "site-1" / "cert.pem", kit / "cert.pem")
        shutil.copy(kits / "site-1" / "key.pem", kit / "key.pem")
    else:
        raise ValueError(how)
    return kit
