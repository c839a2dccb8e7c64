"""SimEnv: server and clients as threads of this process (real gRPC on loopback), for debugging.

Breakpoints in the training script work. Each site's thread sees its own ``sys.argv`` (its train_args); the
working directory is shared. With clients_per_rank > 1 the sites are grouped into client ranks as in every
other Env (each group one link to the server), which is what makes thousands of simulated sites cheap; a
client rank reaches the server of its own process in-process (the same checks, no loopback gRPC copies),
sites of their own (clients_per_rank 1) keep real gRPC.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

from hpcflare.env.api import Env, Run, deadline_after, sites_from
from hpcflare.errors import ConfigError
from hpcflare.exitcodes import ExitCode
from hpcflare.job import JobDir, JobState
from hpcflare.runtime import flower
from hpcflare.runtime.client_rank import local_slots, run_sites, settle_clients_per_rank
from hpcflare.runtime.launch import run_client, run_server
from hpcflare.runtime.script_runner import script_path
from hpcflare.security.jobs import prepare_job


class SimRun(Run):
    def __init__(
        self, job_dir: JobDir, threads: dict[str, threading.Thread], codes: dict[str, ExitCode]
    ) -> None:
        super().__init__(job_dir)
        self.threads, self.exit_codes = threads, codes

    def wait(self, timeout: float | None) -> bool:
        deadline = deadline_after(timeout)
        server = self.threads["server"]
        while server.is_alive():
            if time.monotonic() >= deadline:
                return False
            server.join(0.1)
        # the server is gone (done or dead): clients get `end` within the grace; a stuck one is left behind
        # (a daemon thread) rather than holding get_result() until its own server_lost_timeout
        grace = time.monotonic() + self.job_dir.load_config().load_settings().end_grace + 5
        for thread in self.threads.values():
            thread.join(max(0.0, min(grace, deadline) - time.monotonic()))
        code = self.exit_codes.get("server")
        self.job_dir.settle(
            "the server thread ended without recording an end"
            + (f" (exit {int(code)})" if code is not None else " (it raised: see logs/server.log)"),
            None if code is None else int(code),
        )
        return True

    def abort(self) -> None:
        self.job_dir.write_status(
            JobState.ABORTED, message="SimEnv abort: threads finish at their next deadline"
        )


PROCESS_GLOBAL = re.compile(
    r"^\s*(import|from)\s+(lightning|pytorch_lightning|nvflare\.client\.lightning|"
    r"nvflare\.app_opt\.lightning|hpcflare\.client\.lightning)\b",
    re.M,
)
"""Imports of libraries whose state is process-wide (Lightning's trainer and progress display): a script that
has one runs each site in a process of its own under ``processes="auto"``."""


class SimEnv(Env):
    """``SimEnv(num_clients=2)`` / ``SimEnv(clients=["a", "b"])`` (NVFlare's names) choose the sites the recipe
    runs with; ``workspace_root`` is NVFlare's name for ``job_root``; ``clients_per_rank`` overrides the job's.
    ``processes``: False = every site a thread of this process (breakpoints work, thousands of sites are cheap);
    True = every site a process of its own, as NVFlare's simulator does (LocalEnv's launch); "auto" (default) =
    processes for scripts that import Lightning (its state is process-wide), threads otherwise."""

    def __init__(
        self,
        job_root: str | Path = "jobs",
        verbose: bool = True,
        num_clients: int | None = None,
        clients: list[str] | None = None,
        workspace_root: str | Path | None = None,
        num_threads: int | None = None,
        clients_per_rank: int | str | None = None,
        processes: bool | str = "auto",
    ) -> None:
        super().__init__(workspace_root if workspace_root is not None else job_root)
        if processes not in (True, False, "auto"):
            raise ConfigError(f"SimEnv processes= must be True, False or 'auto', got {processes!r}")
        self.verbose = verbose
        self.sites = sites_from(num_clients, clients)
        self.clients_per_rank = clients_per_rank
        self.processes = processes

    def wants_processes(self, job_dir: JobDir) -> bool:
        if self.processes != "auto":
            return bool(self.processes)
        config = job_dir.load_config()
        try:
            text = (job_dir.root / config.train_script).read_text(errors="replace")
        except OSError:
            return False
        return bool(PROCESS_GLOBAL.search(text))

    def deploy(self, job_dir: JobDir) -> Run:
        job_dir.check_deployable()
        if self.wants_processes(job_dir):
            from hpcflare.env.local import LocalEnv

            return LocalEnv(
                self.job_root, verbose=self.verbose, clients_per_rank=self.clients_per_rank
            ).deploy(job_dir)
        config = settle_clients_per_rank(
            job_dir, self.clients_per_rank, local_slots
        )  # first: kits follow ranks
        prepare_job(job_dir, secure_default=False)
        script = script_path(job_dir, config.train_script)
        sys.argv = [str(script), *config.train_args]
        if str(script.parent) not in sys.path:
            sys.path.insert(0, str(script.parent))
        codes: dict[str, ExitCode] = {}

        def server() -> None:
            codes["server"] = run_server(job_dir, echo=self.verbose)

        def client(name: str, sites: list[str]) -> None:
            if flower.is_flower(config):  # Flower's engine: SuperNode processes, managed from this thread
                codes[name] = flower.run_nodes(job_dir, name, sites)
            elif sites == [name]:
                codes[name] = run_client(job_dir, name, per_thread=True)
            else:
                codes[name] = run_sites(job_dir, sites, name, own_process=False)

        threads = {"server": threading.Thread(target=server, name="sim-server", daemon=True)}
        threads.update(
            {
                name: threading.Thread(target=client, args=(name, sites), name=f"sim-{name}", daemon=True)
                for name, sites in config.client_units().items()
            }
        )
        for thread in threads.values():
            thread.start()
        return SimRun(job_dir, threads, codes)
