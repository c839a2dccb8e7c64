"""A real federation on loopback: a standing server process, site agent processes each in a directory tree of
its own holding only its kit (no shared filesystem with the server), and admin sessions."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import yaml

from hpcflare.federation import Session
from hpcflare.recipe import FedAvgRecipe
from hpcflare.security.provision import Project, provision

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "site_script.py"

FAST = {
    "federation_poll_wait": 2,
    "federation_check_interval": 0.5,
    "federation_retry_max": 2,
}
"""Short federation deadlines: a test sees every change within a second or two."""

PROJECT = {
    "project": "consortium",
    "participants": [
        {"name": "server", "role": "server", "hosts": ["localhost", "127.0.0.1"]},
        {"name": "root", "role": "admin", "admin_role": "project_admin", "org": "board"},
        {"name": "alice", "role": "admin", "admin_role": "lead", "org": "hosp-a"},
        {"name": "dave", "role": "admin", "admin_role": "lead", "org": "hosp-b"},
        {"name": "olga", "role": "admin", "admin_role": "org_admin", "org": "hosp-a"},
        {"name": "bob", "role": "admin", "admin_role": "member", "org": "hosp-a"},
        {"name": "site-1", "role": "client", "org": "hosp-a"},
        {"name": "site-2", "role": "client", "org": "hosp-b"},
        {"name": "site-3", "role": "client", "org": "hosp-c"},
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Federation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.kits = provision(Project.from_dict(PROJECT), root / "provisioned")
        self.port = free_port()
        self.server_dir = root / "server"
        self.server_dir.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.server_settings: dict[str, Any] = {"site_join_timeout": 120}
        self.server_settings_yaml: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def _spawn(self, name: str, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        out = open(cwd / f"{name}.out", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcflare.cli", *argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def start_server(self, **settings: Any) -> None:
        self.server_settings.update(settings)
        config = {
            "workspace": str(self.server_dir / "ws"),
            "job_ports": [self.port + 1, self.port + 60],
            "settings_profile": "dev",
            "settings": {**FAST, **self.server_settings},
            **self.server_settings_yaml,
        }
        (self.server_dir / "server.yaml").write_text(yaml.safe_dump(config))
        shutil.copytree(self.kits / "server", self.server_dir / "kit", dirs_exist_ok=True)
        argv = ["federation", "serve", "--kit", "kit", "--port", str(self.port), "--config", "server.yaml"]
        self._spawn("server", argv, self.server_dir)
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.procs["server"].poll() is None, self.output("server")
                assert time.monotonic() < deadline, "the standing server did not listen within 120 s"
                time.sleep(0.2)

    def site_dir(self, site: str) -> Path:
        return self.root / "institutions" / site

    def start_agent(self, site: str, kit: Path | None = None, **site_yaml: Any) -> subprocess.Popen[bytes]:
        """A site agent in a tree of its own: its kit copied in, its data under data/, its site.yaml."""
        home = self.site_dir(site)
        (home / "data").mkdir(parents=True, exist_ok=True)
        (home / "data" / "offset.txt").write_text(site.rsplit("-", 1)[-1])
        if not (home / "kit").exists() or kit is not None:
            shutil.rmtree(home / "kit", ignore_errors=True)
            shutil.copytree(kit or self.kits / site, home / "kit")
        config = {
            "workspace": str(home / "work"),
            "data_root": str(home / "data"),
            "settings_profile": "dev",
            "settings": FAST,
            **site_yaml,
        }
        (home / "site.yaml").write_text(yaml.safe_dump(config))
        argv = ["site", "serve", "--kit", "kit", "--server", self.address, "--config", "site.yaml"]
        return self._spawn(site, argv, home)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def output(self, name: str) -> str:
        home = self.server_dir if name == "server" else self.site_dir(name)
        path = home / f"{name}.out"
        return path.read_text() if path.is_file() else ""

    def session(self, admin: str = "alice") -> Session:
        return Session(self.kits / admin, self.address)

    def wait_connected(self, sites: list[str], timeout: float = 120) -> None:
        with self.session("root") as s:
            deadline = time.monotonic() + timeout
            while True:
                info = s.get_system_info()["sites"]
                if all(info[site]["connected"] for site in sites):
                    return
                for site in sites:
                    proc = self.procs.get(site)
                    assert proc is None or proc.poll() is None, self.output(site)
                assert time.monotonic() < deadline, f"agents not connected: {info}"
                time.sleep(0.3)

    def up(self, sites: list[str], **server_settings: Any) -> None:
        """The standing server and the agents of ``sites``, all connected."""
        self.start_server(**server_settings)
        for site in sites:
            self.start_agent(site)
        self.wait_connected(sites)

    def recipe(
        self,
        sites: list[str],
        rounds: int = 3,
        sleep: float = 0.0,
        min_clients: int | None = None,
        size: int = 3,
        name: str = "consortium-job",
        **options: Any,
    ) -> FedAvgRecipe:
        """Each site adds the number in its own data_root/offset.txt per round."""
        return FedAvgRecipe(
            name=name,
            model={"w": np.zeros(size, dtype=np.float32)},
            clients=sites,
            min_clients=min_clients or len(sites),
            num_rounds=rounds,
            train_script=SCRIPT,
            train_args=f"--data {{data_root}}/offset.txt --sleep {sleep}",
            settings_profile="dev",
            **options,
        )

    def job(
        self, sites: list[str], rounds: int = 3, sleep: float = 0.0, min_clients: int | None = None
    ) -> Path:
        """An exported job (see recipe)."""
        return self.recipe(sites, rounds, sleep, min_clients).export(self.root / "admin-jobs").root

    def run(
        self, job_root: Path, resource_spec: dict[str, Any] | None = None, timeout: float = 300
    ) -> tuple[str, dict[str, Any], Path, np.ndarray]:
        """Submit ``job_root`` as alice, wait for it to end (asserting it is done), download its results:
        (job id, status, results folder, the result model's "w")."""
        with self.session("alice") as admin:
            job_id = admin.submit_job(job_root, resource_spec=resource_spec)
            status = wait_state(admin, job_id, ("done", "failed", "aborted"), timeout=timeout)
            assert status["state"] == "done", status
            folder = admin.download_job_result(job_id, self.root / "results" / job_id)
        model = folder / "job" / "models" / "global_model.safetensors"
        return job_id, status, folder, safetensors.numpy.load_file(str(model))["w"]

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        # ranks run in sessions of their own (they outlive an agent's restart): end those of this test
        subprocess.run(["pkill", "-f", str(self.root)], check=False)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


def wait_state(
    session: Session, job_id: str, states: tuple[str, ...], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = session.get_job_status(job_id)
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, (
            f"job {job_id} still {status['state']} after {timeout:g}s: {status}"
        )
        time.sleep(0.3)


def ordinal(site: str) -> float:
    return float(site.rsplit("-", 1)[-1])
