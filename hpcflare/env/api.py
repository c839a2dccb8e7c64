"""Env / Run contract shared by every way of running a job (sim, local, Slurm, MPI)."""

from __future__ import annotations

import abc
import time
from pathlib import Path
from typing import Any

from hpcflare.env.progress import RoundProgress
from hpcflare.errors import ConfigError, JobFailedError, StreamTimeoutError
from hpcflare.job import JobDir, JobState
from hpcflare.runtime.cluster.beacon import clear_start_failures


class Run(abc.ABC):
    """Handle on a deployed job."""

    progress: bool | None = None
    """Per-round progress bar on stderr while waiting: None = only when stderr is a terminal."""

    def __init__(self, job_dir: JobDir) -> None:
        self.job_dir = job_dir

    def get_job_id(self) -> str:
        return self.job_dir.root.name

    def get_status(self) -> dict[str, Any]:
        """The server's status.json (state: pending|registration|running|completed|failed|aborted)."""
        return self.job_dir.read_status()

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> bool:
        """Wait for every rank to finish; False if ``timeout`` passed first."""

    @abc.abstractmethod
    def abort(self) -> None: ...

    def get_result(self, timeout: float | None = None) -> Path:
        """Wait for the job and return the result model's path; raise JobFailedError if it did not complete."""
        try:
            with RoundProgress(self.job_dir, enabled=self.progress):
                finished = self.wait(timeout)
        except KeyboardInterrupt:
            self.abort()
            raise
        if not finished:
            raise StreamTimeoutError(
                f"job {self.get_job_id()} still running after {timeout}s; call get_result() again or abort()"
            )
        status = self.get_status()
        if status.get("state") != JobState.COMPLETED:
            raise JobFailedError(
                f"job {self.get_job_id()} {status.get('state')}: {status.get('message', 'no message')}. "
                f"Logs: {self.job_dir.log_dir}"
            )
        model, flower = self.job_dir.result_model_path, self.job_dir.models_dir / "flower_output.txt"
        return flower if flower.exists() and not model.exists() else model  # a Flower app's: its output


class Env(abc.ABC):
    sites: list[str] | None = None
    """Set by Envs that choose the sites (SimEnv(num_clients=...)); recipe.execute() then runs with these."""

    def __init__(self, job_root: str | Path = "jobs") -> None:
        self.job_root = Path(job_root)

    @abc.abstractmethod
    def deploy(self, job_dir: JobDir) -> Run: ...

    def resume(self, job_dir: JobDir | str | Path) -> Run:
        """Continue a job that was killed or failed from its last checkpoint (models/checkpoint.json), in
        this Env. The previous life's rendezvous files are dropped so no rank reads a dead server's address."""
        job_dir = job_dir if isinstance(job_dir, JobDir) else JobDir(job_dir)
        job_dir.check_deployable()  # not while its server lives; not once it completed
        for stale in job_dir.rendezvous_dir.glob("*.json"):
            stale.unlink(missing_ok=True)
        clear_start_failures(job_dir.rendezvous_dir)
        job_dir.write_status(
            JobState.RESUMING, message=f"resumed from {job_dir.models_dir / 'checkpoint.json'}"
        )
        return self.deploy(job_dir)


def sites_from(num_clients: int | None, clients: list[str] | None) -> list[str] | None:
    """NVFlare's SimEnv/PocEnv arguments as site names (None: keep the recipe's)."""
    if clients is not None:
        if num_clients is not None and num_clients != len(clients):
            raise ConfigError(f"num_clients={num_clients} but {len(clients)} client names were given")
        return [str(c) for c in clients]
    if num_clients is not None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ConfigError(f"num_clients must be a whole number >= 1, got {num_clients!r}")
        return [f"site-{i}" for i in range(1, num_clients + 1)]
    return None


def deadline_after(timeout: float | None) -> float:
    return float("inf") if timeout is None else time.monotonic() + timeout
