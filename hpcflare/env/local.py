"""LocalEnv: every rank is its own OS process on this machine, talking real gRPC over loopback.

Clients are forked from a pre-imported parent (hpcflare.env.zygote) by default, which makes starting
hundreds of them cheap; ``fork=False`` spawns each with a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from hpcflare.env.api import Env, Run, deadline_after
from hpcflare.errors import ConfigError
from hpcflare.exitcodes import describe
from hpcflare.job import FINAL_STATES, JobDir, JobState
from hpcflare.rank_logger import console, plural
from hpcflare.runtime.client_rank import local_slots, settle_clients_per_rank
from hpcflare.runtime.cluster.memory import MALLOC_ENV
from hpcflare.security.jobs import prepare_job

PID_FILE_TIMEOUT = 60.0
"""How long client_pid() waits for the fork server to report its children."""


EXIT_LINE_RANKS = 5
"""Ranks named per exit code in the lines LocalEnv prints when a job ends (the rest are counted)."""


class LocalRun(Run):
    def __init__(
        self,
        job_dir: JobDir,
        server: subprocess.Popen,
        clients: dict[str, subprocess.Popen],
        zygote: subprocess.Popen | None,
        files: list[IO[bytes]],
        grace: float,
    ) -> None:
        super().__init__(job_dir)
        self.server, self.clients, self.zygote, self._files, self._grace = (
            server,
            clients,
            zygote,
            files,
            grace,
        )
        self.exit_codes: dict[str, int] = {}

    def client_pid(self, site: str) -> int:
        """The pid of the process running ``site`` (with clients_per_rank > 1, its client rank's)."""
        if site in self.clients:
            return self.clients[site].pid
        site = next(
            (name for name, sites in self.job_dir.load_config().client_units().items() if site in sites), site
        )
        path = self.job_dir.log_dir / "client_pids.json"
        deadline = time.monotonic() + PID_FILE_TIMEOUT
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fork server did not write {path} within {PID_FILE_TIMEOUT:g}s")
            time.sleep(0.05)
        return int(json.loads(path.read_text())[site])

    def _procs(self) -> list[subprocess.Popen]:
        return [self.server, *self.clients.values(), *([self.zygote] if self.zygote else [])]

    def wait(self, timeout: float | None) -> bool:
        deadline = deadline_after(timeout)
        while self.server.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        # the server is gone: clients get `end` and leave within the grace; stragglers are killed
        client_deadline = time.monotonic() + self._grace + 10
        for proc in self._procs()[1:]:
            try:
                proc.wait(max(0.0, client_deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        self.exit_codes = {
            "server": self.server.returncode,
            **{s: p.returncode for s, p in self.clients.items()},
        }
        codes_file = self.job_dir.log_dir / "client_exit_codes.json"
        if self.zygote is not None:  # sites it never reaped were killed with it
            reaped = json.loads(codes_file.read_text()) if codes_file.exists() else {}
            forked = [s for s in self.job_dir.load_config().client_units() if s not in self.clients]
            self.exit_codes.update({s: reaped.get(s, -signal.SIGKILL) for s in forked})
        for f in self._files:
            f.close()
        code = self.server.returncode
        self.job_dir.settle(
            f"the server process ended without recording an end: {describe(code)} (exit {code}); "
            f"see {self.job_dir.log_dir / 'server.log'}",
            code,
        )
        out = console(sys.stderr)
        by_code: dict[int, list[str]] = {}
        for rank, code in self.exit_codes.items():
            if code != 0:
                by_code.setdefault(code, []).append(rank)
        for code, ranks in by_code.items():  # one line per exit code, not per rank
            named = ", ".join(ranks[:EXIT_LINE_RANKS]) + (
                f" and {len(ranks) - EXIT_LINE_RANKS} more" if len(ranks) > EXIT_LINE_RANKS else ""
            )
            out.write(f"[hpcflare] {named} exited {code}: {describe(code)}\n")
        status = self.job_dir.read_status()
        if by_code and status.get("state") in (
            JobState.FAILED,
            JobState.ABORTED,
        ):  # the cause, last and first
            out.write(f"[hpcflare] job {status.get('state')}: {status.get('message', '')}\n")
        return True

    def abort(self) -> None:
        procs = self._procs()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        status = self.get_status()
        if status.get("state") not in FINAL_STATES:
            self.job_dir.write_status(JobState.ABORTED, message="aborted by user")


def _pump(stream: IO[bytes]) -> None:
    """The server's echo, line by line, to this process's console (above a progress bar, if one is shown)."""
    out = console()
    with stream:
        for line in stream:
            out.write(line.decode(errors="replace"))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


class LocalEnv(Env):
    """One process for the server; clients forked from a pre-imported parent (or spawned, ``fork=False``)."""

    def __init__(
        self,
        job_root: str | Path = "jobs",
        verbose: bool = True,
        python: str = sys.executable,
        site_env: dict[str, dict[str, str]] | None = None,
        fork: bool = True,
        clients_per_rank: int | str | None = None,
    ) -> None:
        """``site_env`` adds environment variables per site (e.g. CUDA_VISIBLE_DEVICES, HPCFLARE_STAGING_DIR);
        sites with their own environment are always spawned. ``clients_per_rank`` overrides the job's (default
        'auto': a process per site up to client_rank.PROCESSES_PER_CORE sites per core, else one client rank per core)."""
        super().__init__(job_root)
        self.verbose, self.python, self.site_env, self.fork = verbose, python, dict(site_env or {}), fork
        self.clients_per_rank = clients_per_rank

    def _cmd(self, job_dir: JobDir, *args: str) -> list[str]:
        return [self.python, "-m", "hpcflare.runtime.launch", "--job-dir", str(job_dir.root), *args]

    def deploy(self, job_dir: JobDir) -> Run:
        job_dir.check_deployable()
        config = settle_clients_per_rank(
            job_dir, self.clients_per_rank, local_slots
        )  # first: kits follow ranks
        prepare_job(job_dir, secure_default=False)
        units = config.client_units()
        if self.site_env and config.per_rank > 1:
            raise ConfigError(
                f"site_env gives sites their own environment, but clients_per_rank={config.per_rank} runs "
                "several sites in one process: pass clients_per_rank=1 with site_env"
            )
        settings = config.load_settings()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HPCFLARE_JOB_DIR": str(job_dir.root)}
        env.update({k: v for k, v in MALLOC_ENV.items() if k not in os.environ})
        # many ranks on one machine: give each a fair share of the cores instead of every torch/numpy
        # process starting one thread per core (heavy oversubscription, rounds 10x slower)
        share = str(max(1, (os.cpu_count() or 1) // (1 + len(units) + config.relays)))
        env.update(
            {
                k: share
                for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                if k not in os.environ
            }
        )
        job_dir.log_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("client_pids.json", "client_exit_codes.json"):
            (job_dir.log_dir / stale).unlink(missing_ok=True)
        files: list[IO[bytes]] = []
        server_out = None
        if not self.verbose:
            server_out = open(job_dir.log_dir / "server.out", "wb")
            files.append(server_out)
        server = subprocess.Popen(
            self._cmd(job_dir, "--role", "server"),
            env=env,
            stdout=server_out or subprocess.PIPE,  # verbose: its lines reach the terminal through console()
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if server.stdout is not None:
            threading.Thread(target=_pump, args=(server.stdout,), name="server-echo", daemon=True).start()
        relays = []
        for name in config.relay_names():
            out = open(job_dir.log_dir / f"{name}.out", "wb")
            files.append(out)  # closed by LocalRun.wait, like the clients' files
            relays.append(
                subprocess.Popen(
                    self._cmd(job_dir, "--role", "relay", "--site", name),
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        forked = [name for name in units if self.fork and name not in self.site_env]
        zygote = None
        if forked:
            zygote = subprocess.Popen(
                [self.python, "-m", "hpcflare.env.zygote", "--job-dir", str(job_dir.root), *forked],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        clients = {}
        for site in units:
            if site in forked:
                continue
            out = open(job_dir.log_dir / f"{site}.out", "wb")
            files.append(out)
            clients[site] = subprocess.Popen(
                self._cmd(job_dir, "--role", "client", "--site", site),
                env={**env, "HPCFLARE_SITE_NAME": site, **self.site_env.get(site, {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if self.verbose:
            per = f" in {plural(len(units), 'client rank')}" if config.per_rank > 1 else ""
            console().write(
                f"[hpcflare] job {config.job_id}: {plural(len(config.clients), 'client')} started locally{per}; "
                f"job dir {job_dir.root}\n"
            )
        clients.update(zip(config.relay_names(), relays))
        return LocalRun(job_dir, server, clients, zygote, files, settings.end_grace)
