"""The commands an institution's operators and admins type: hpcflare admin ..., a recipe's --env prod,
hpcflare provision --role admin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from hpcflare.security.provision import Project, provision
from tests.federation.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def hpcflare(*argv: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def test_admin_commands_end_to_end(federation, tmp_path):
    federation.start_server()
    for site in ("site-1", "site-2"):
        federation.start_agent(site)
    federation.wait_connected(["site-1", "site-2"])
    kit = ["--kit", str(federation.kits / "alice"), "--server", federation.address]
    sites = hpcflare("admin", "sites", *kit)
    assert sites.returncode == 0 and json.loads(sites.stdout)["sites"]["site-1"]["connected"] is True
    submitted = hpcflare("admin", "submit", str(federation.job(["site-1", "site-2"], rounds=2)), *kit)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    monitored = hpcflare("admin", "monitor", job_id, *kit, "--timeout", "240")
    assert monitored.returncode == 0, monitored.stdout + monitored.stderr
    assert "done" in monitored.stdout.splitlines()[-1]
    assert job_id in hpcflare("admin", "list", *kit).stdout
    downloaded = hpcflare("admin", "download", job_id, *kit, "--dest", str(tmp_path / "out"))
    assert (Path(downloaded.stdout.strip()) / "job" / "models" / "global_model.safetensors").is_file()
    member = hpcflare(
        "admin", "abort", job_id, "--kit", str(federation.kits / "bob"), "--server", federation.address
    )
    assert member.returncode != 0 and "may not abort" in member.stderr and "Traceback" not in member.stderr


def test_a_recipe_job_py_with_env_prod(federation, tmp_path):
    """NVFlare's hello-numpy job.py, unchanged but for --env prod: submitted to the standing server."""
    federation.start_server()
    for site in ("site-1", "site-2"):
        federation.start_agent(site)
    federation.wait_connected(["site-1", "site-2"])
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "hello-numpy" / "job.py"),
            "--env",
            "prod",
            "--n-clients",
            "2",
            "--startup-kit",
            str(federation.kits / "alice"),
            "--server",
            federation.address,
            "--job-root",
            str(tmp_path / "jobs"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed" in run.stdout and "[[ 4.  5.  6.]" in run.stdout


def test_provision_issues_an_admin_kit(tmp_path):
    project = tmp_path / "project.yaml"
    project.write_text(
        yaml.safe_dump(
            {
                "project": "p",
                "participants": [
                    {"name": "server", "role": "server", "hosts": ["fl.example.org"]},
                    {"name": "site-1"},
                ],
            }
        )
    )
    assert hpcflare("provision", str(project), "-o", str(tmp_path / "out")).returncode == 0
    added = hpcflare(
        "provision",
        str(tmp_path / "out" / "p"),
        "--add",
        "eve",
        "--role",
        "admin",
        "--admin-role",
        "member",
        "--org",
        "uni",
    )
    assert added.returncode == 0, added.stderr
    kit = yaml.safe_load((tmp_path / "out" / "p" / "eve" / "kit.yaml").read_text())
    assert kit["admin_roles"] == {"eve": "member"} and kit["orgs"]["eve"] == "uni"
    assert kit["server_address"] == "fl.example.org:8002"
    server = yaml.safe_load((tmp_path / "out" / "p" / "server" / "kit.yaml").read_text())
    assert server["admin_roles"] == {"eve": "member"}  # the server learns the new admin's role
    bad = hpcflare("provision", str(tmp_path / "out" / "p"), "--add", "mallory", "--role", "admin")
    assert bad.returncode != 0 and "admin_role" in bad.stderr


def test_admin_commands_reach_the_server_their_kit_names(tmp_path):
    """No --server: the standing server is the one the admin's kit names (project.yaml's server host and
    server_port); one that is down is named in one line, without a traceback."""
    port = free_port()  # nothing listens there
    project = {
        "project": "p",
        "server_port": port,
        "participants": [
            {"name": "server", "role": "server", "hosts": ["localhost"]},
            {"name": "alice", "role": "admin", "admin_role": "lead"},
        ],
    }
    kits = provision(Project.from_dict(project), tmp_path / "kits")
    listed = hpcflare("admin", "sites", "--kit", str(kits / "alice"), timeout=120)
    assert listed.returncode != 0 and f"standing server at localhost:{port} is unreachable" in listed.stderr
    assert "Traceback" not in listed.stderr
