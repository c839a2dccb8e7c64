"""hpcflare provision: CA, per-participant kits with 0600 keys, policy hashing, --add."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from hpcflare.cli import main as cli
from hpcflare.errors import CertificateError, ConfigError
from hpcflare.security.policy import script_digest
from hpcflare.security.provision import Participant, Project, add_participant
from hpcflare.security.tls import StartupKit, common_name


def test_provision_cli_writes_ca_and_kits_with_private_keys(tmp_path: Path, capsys):
    script = tmp_path / "client.py"
    script.write_text("print('hi')\n")
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "demo",
                "participants": [
                    {"name": "server", "role": "server"},
                    {"name": "site-a", "allowed_scripts": ["client.py"]},
                    {"name": "site-b"},
                ],
            }
        )
    )
    assert cli(["provision", str(tmp_path / "project.yaml"), "-o", str(tmp_path / "ws")]) == 0
    root = tmp_path / "ws" / "demo"
    assert stat.S_IMODE((root / "ca" / "rootCA.key").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((root / "ca" / "rootCA.pem").read_bytes())
    for name in ("server", "site-a", "site-b"):
        kit = StartupKit.load(root / name)
        assert stat.S_IMODE((root / name / "key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o700
        assert not (root / name / "rootCA.key").exists()  # the CA key never goes into a kit
        cert = x509.load_pem_x509_certificate(kit.cert_pem)
        cert.verify_directly_issued_by(ca)
        assert common_name(cert) == name and kit.self_check() == []
    assert StartupKit.load(root / "server").participants == {
        "server": "server",
        "site-a": "client",
        "site-b": "client",
    }
    site_a = StartupKit.load(root / "site-a")
    assert site_a.policy == {
        "allow_any_script": False,
        "allowed_scripts": [{"name": "client.py", "sha256": script_digest(script)}],
    }
    assert StartupKit.load(root / "site-b").policy["allow_any_script"] is True
    # the same project again is refused (it would orphan the issued kits)
    assert cli(["provision", str(tmp_path / "project.yaml"), "-o", str(tmp_path / "ws")]) == 2
    assert "already provisioned" in capsys.readouterr().err


def test_add_participant_extends_server_and_relay_lists(tmp_path: Path):
    from hpcflare.security.provision import provision
    from tests.security.conftest import PROJECT

    root = provision(Project.from_dict(PROJECT), tmp_path)
    add_participant(root, Participant("site-3", "client"))
    assert "site-3" in StartupKit.load(root / "server").participants
    assert "site-3" in StartupKit.load(root / "relay-1").participants
    assert StartupKit.load(root / "site-3").self_check() == []
    with pytest.raises(ConfigError, match="already a participant"):
        add_participant(root, Participant("site-3", "client"))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"participants": []}, "'project' name"),
        (
            {"project": "p", "participants": [{"name": "a"}]},
            "exactly one participant must have role 'server'",
        ),
        (
            {"project": "p", "participants": [{"name": "s", "role": "server"}, {"name": "../x"}]},
            "invalid participant name",
        ),
        ({"project": "p", "participants": [{"name": "s", "role": "server"}, {"name": "s"}]}, "unique"),
        ({"project": "p", "participants": [{"name": "s", "role": "boss"}]}, "role 'boss'"),
        ({"project": "p", "participants": [{"name": "s", "role": "server", "colour": 1}]}, "unknown key"),
    ],
)
def test_bad_project_files_are_clear_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        Project.from_dict(data)


def test_kit_with_a_world_readable_key_is_refused(kits: Path):
    (kits / "site-1" / "key.pem").chmod(0o644)
    with pytest.raises(CertificateError, match="chmod 600"):
        StartupKit.load(kits / "site-1")


def test_missing_kit_says_how_to_make_one(tmp_path: Path):
    with pytest.raises(ConfigError, match="hpcflare provision"):
        StartupKit.load(tmp_path / "nowhere")


def test_self_check_names_expired_and_foreign_certificates(kits: Path):
    from tests.security.conftest import tamper

    tamper(kits, "site-1", "expired")
    assert any("expired on" in p for p in StartupKit.load(kits / "site-1").self_check())
    (kits / "site-2" / "cert.pem").write_bytes((kits / "site-1" / "cert.pem").read_bytes())
    problems = StartupKit.load(kits / "site-2").self_check()
    assert any("names 'site-1'" in p for p in problems)
