"""LocalEnv: every rank is its own OS process on this machine, talking real gRPC over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Optional

from hpcflare.env.api import Env, Run, deadline_after
from hpcflare.exitcodes import describe
from hpcflare.job import JobDir


class LocalRun(Run):
    def __init__(self, job_dir: JobDir, server: subprocess.Popen, clients: dict[str, subprocess.Popen],
                 files: list[IO[bytes]], grace: float) -> None:
        super().__init__(job_dir)
        self.server, self.clients, self._files, self._grace = server, clients, files, grace
        self.exit_codes: dict[str, int] = {}

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = deadline_after(timeout)
        while self.server.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        # the server is gone: clients get `end` and leave within the grace; stragglers are killed
        client_deadline = time.monotonic() + self._grace + 10
        for site, proc in self.clients.items():
            try:
                proc.wait(max(0.0, client_deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.exit_codes = {"server": self.server.returncode, **{s: p.returncode for s, p in self.clients.items()}}
        for f in self._files:
            f.close()
        failed = {rank: code for rank, code in self.exit_codes.items() if code != 0}
        for rank, code in failed.items():
            print(f"[hpcflare] {rank} exited {code}: {describe(code)}", file=sys.stderr)
        return True

    def abort(self) -> None:
        procs = [self.server, *self.clients.values()]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        status = self.get_status()
        if status.get("state") not in ("completed", "failed", "aborted"):
            self.job_dir.write_status("aborted", message="aborted by user")


class LocalEnv(Env):
    """Spawn ``python -m hpcflare.runtime.launch`` for the server and for each client site."""

    def __init__(self, job_root: str | Path = "jobs", verbose: bool = True, python: str = sys.executable,
                 site_env: dict[str, dict[str, str]] | None = None) -> None:
        """``site_env`` adds environment variables per site (e.g. CUDA_VISIBLE_DEVICES, HPCFLARE_STAGING_DIR)."""
        super().__init__(job_root)
        self.verbose, self.python, self.site_env = verbose, python, dict(site_env or {})

    def _cmd(self, job_dir: JobDir, *args: str) -> list[str]:
        return [self.python, "-m", "hpcflare.runtime.launch", "--job-dir", str(job_dir.root), *args]

    def deploy(self, job_dir: JobDir) -> Run:
        config = job_dir.load_config()
        settings = config.load_settings()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HPCFLARE_JOB_DIR": str(job_dir.root)}
        job_dir.log_dir.mkdir(parents=True, exist_ok=True)
        files: list[IO[bytes]] = []
        server_out = None
        if not self.verbose:
            server_out = open(job_dir.log_dir / "server.out", "wb")
            files.append(server_out)
        server = subprocess.Popen(self._cmd(job_dir, "--role", "server"), env=env, stdout=server_out,
                                  stderr=subprocess.STDOUT if server_out else None, stdin=subprocess.DEVNULL)
        clients = {}
        for site in config.clients:
            out = open(job_dir.log_dir / f"{site}.out", "wb")
            files.append(out)
            clients[site] = subprocess.Popen(self._cmd(job_dir, "--role", "client", "--site", site),
                                             env={**env, "HPCFLARE_SITE_NAME": site, **self.site_env.get(site, {})},
                                             stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.verbose:
            print(f"[hpcflare] job {config.job_id}: {len(clients)} clients started locally; job dir {job_dir.root}",
                  flush=True)
        return LocalRun(job_dir, server, clients, files, settings.end_grace)
