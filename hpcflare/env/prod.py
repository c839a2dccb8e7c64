"""ProdEnv: submit a recipe's job to a federation's standing server with an admin's startup kit (NVFlare's
ProdEnv). The Run it returns behaves as every other Env's: status, the per-round progress bar, the result model
(downloaded into the local job folder when the job is done) and abort."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from hpcflare.env.api import Env, Run, deadline_after
from hpcflare.federation.session import Session
from hpcflare.federation.store import FINISHED
from hpcflare.fileio import atomic_write_text
from hpcflare.job import JobDir, JobState

STATES = {"done": JobState.COMPLETED, "failed": JobState.FAILED, "aborted": JobState.ABORTED}


class ProdEnv(Env):
    def __init__(
        self,
        startup_kit_location: str | Path,
        server: str | None = None,
        login_timeout: float | None = None,
        username: str | None = None,
        job_root: str | Path = "jobs",
        resource_spec: dict[str, Any] | None = None,
    ) -> None:
        """``startup_kit_location``: an admin's kit (hpcflare provision, role admin); ``server``: HOST:PORT of the
        standing server (default: the one the kit names). ``login_timeout`` and ``username`` are NVFlare's and
        unused: the kit's certificate is the login. ``resource_spec``: {site or '*': {gpus, time_minutes, ...}}."""
        super().__init__(job_root)
        self.kit, self.server, self.resource_spec = Path(startup_kit_location), server, resource_spec

    def deploy(self, job_dir: JobDir) -> Run:
        session = Session(self.kit, self.server)
        job_id = session.submit_job(job_dir.root, self.resource_spec)
        return FederationRun(job_dir, session, job_id)

    def resume(self, job_dir: JobDir | str | Path) -> Run:
        raise NotImplementedError(
            "a job on a standing server resumes there (the server and its job store survive restarts); submit "
            "a new job to start again"
        )


class FederationRun(Run):
    """A job on a standing server, seen from the admin's machine; its status mirrors into the local job folder."""

    def __init__(self, job_dir: JobDir, session: Session, job_id: str) -> None:
        super().__init__(job_dir)
        self.session, self.federation_job_id = session, job_id
        self._version: int | None = None
        self._last: dict[str, Any] = {}

    def get_job_id(self) -> str:
        return self.federation_job_id

    def get_status(self) -> dict[str, Any]:
        return self._refresh(0.0)

    def _refresh(self, wait: float) -> dict[str, Any]:
        status = self.session.get_job_status(self.federation_job_id, since=self._version, wait=wait)
        self._version = status.get("version")
        server = dict(status.get("server") or {})
        state = STATES.get(status["state"], server.get("state") or JobState.PENDING)
        mirrored = {
            **server,
            "state": str(state),
            "message": status.get("message") or server.get("message", ""),
            "sites": status.get("sites"),
            "federation_state": status["state"],
        }
        if mirrored != self._last:
            self._last = mirrored
            extra = {k: v for k, v in mirrored.items() if k not in ("state", "updated")}
            self.job_dir.write_status(
                JobState(state), **extra
            )  # what RoundProgress and `hpcflare status` read
        return mirrored

    def wait(self, timeout: float | None) -> bool:
        deadline = deadline_after(timeout)
        while True:
            left = deadline - time.monotonic()
            status = self._refresh(max(0.0, min(5.0, left)))
            if status["federation_state"] in FINISHED:
                self._fetch_results()
                return True
            if time.monotonic() >= deadline:
                return False

    def _fetch_results(self) -> None:
        """The job's models, server logs and the sites' logs, into the local job folder."""
        into = self.job_dir.root / "federation"
        folder = self.session.download_job_result(self.federation_job_id, into)
        for model in sorted((folder / "job" / "models").glob("*")):
            target = self.job_dir.models_dir / model.name
            if model.is_file() and model.name != "initial_model.safetensors":
                shutil.copyfile(model, target)
        atomic_write_text(self.job_dir.root / "federation_job_id", self.federation_job_id + "\n")

    def abort(self) -> None:
        self.session.abort_job(self.federation_job_id)
