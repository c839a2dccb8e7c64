"""SimEnv: server and clients as threads of this process (real gRPC on loopback), for debugging.

Breakpoints in the training script work; one process means `sys.argv` and the cwd are shared, so every
site runs the same train_args in the current directory.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Optional

from hpcflare.env.api import Env, Run, deadline_after, sites_from
from hpcflare.exitcodes import ExitCode
from hpcflare.job import JobDir
from hpcflare.security.jobs import prepare_job
from hpcflare.runtime.launch import run_client, run_server
from hpcflare.runtime.script_runner import script_path


class SimRun(Run):
    def __init__(self, job_dir: JobDir, threads: dict[str, threading.Thread], codes: dict[str, ExitCode]) -> None:
        super().__init__(job_dir)
        self.threads, self.exit_codes = threads, codes

    def wait(self, timeout: Optional[float]) -> bool:
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
        self.job_dir.settle("the server thread ended without recording an end" + (
            f" (exit {int(code)})" if code is not None else " (it raised: see logs/server.log)"),
            None if code is None else int(code))
        return True

    def abort(self) -> None:
        self.job_dir.write_status("aborted", message="SimEnv abort: threads finish at their next deadline")


class SimEnv(Env):
    """``SimEnv(num_clients=2)`` / ``SimEnv(clients=["a", "b"])`` (NVFlare's names) choose the sites the recipe
    runs with; ``workspace_root`` is NVFlare's name for ``job_root``."""

    def __init__(self, job_root: str | Path = "jobs", verbose: bool = True, num_clients: int | None = None,
                 clients: list[str] | None = None, workspace_root: str | Path | None = None,
                 num_threads: int | None = None) -> None:
        super().__init__(workspace_root if workspace_root is not None else job_root)
        self.verbose = verbose
        self.sites = sites_from(num_clients, clients)

    def deploy(self, job_dir: JobDir) -> Run:
        job_dir.check_deployable()
        config = prepare_job(job_dir, secure_default=False)
        script = script_path(job_dir, config.train_script)
        sys.argv = [str(script), *config.train_args]
        if str(script.parent) not in sys.path:
            sys.path.insert(0, str(script.parent))
        codes: dict[str, ExitCode] = {}

        def server() -> None:
            codes["server"] = run_server(job_dir, echo=self.verbose)

        def client(site: str) -> None:
            codes[site] = run_client(job_dir, site, per_thread=True)

        threads = {"server": threading.Thread(target=server, name="sim-server", daemon=True)}
        threads.update({site: threading.Thread(target=client, args=(site,), name=f"sim-{site}", daemon=True)
                        for site in config.clients})
        for thread in threads.values():
            thread.start()
        return SimRun(job_dir, threads, codes)
