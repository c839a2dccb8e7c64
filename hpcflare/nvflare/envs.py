"""NVFlare's ``SimEnv``, ``PocEnv``, ``ProdEnv`` and ``Run``, with NVFlare's keywords and return values.

As in NVFlare, ``Run.get_status()`` is a string, ``Run.get_result()`` waits and returns the job's result
workspace (the job directory: ``models/``, ``logs/``, ``tracking/``), or None for a job that did not complete,
after printing a summary with the first cause. hpcflare's own Envs keep returning the result model's path.
"""

from __future__ import annotations

import sys
from typing import Any

from hpcflare import env as hp
from hpcflare.env.api import Env, sites_from
from hpcflare.errors import HpcflareError
from hpcflare.job import FINAL_STATES, JobDir
from hpcflare.recipe.nvflare_keywords import note

SIM_WORKSPACE = "/tmp/nvflare/simulation"
"""NVFlare's default SimEnv workspace_root."""
POC_WORKSPACE = "/tmp/nvflare/poc"


class Run:
    """NVFlare's Run: ``get_job_id()``, ``get_status()`` (a string), ``get_result(timeout=0.0)`` (the result
    workspace or None), ``abort()``. ``hpcflare_run`` is the hpcflare Run behind it."""

    def __init__(self, run: hp.Run) -> None:
        self.hpcflare_run = run
        self._result: str | None = None
        self._done = False
        STARTED.append(self)

    @property
    def done(self) -> bool:
        return self._done

    def get_job_id(self) -> str:
        return self.hpcflare_run.get_job_id()

    def get_status(self) -> str | None:
        try:
            return str(self.hpcflare_run.get_status().get("state") or "pending")
        except (OSError, ValueError):
            return None

    def get_result(self, timeout: float = 0.0, clean_up: bool = True) -> str | None:
        """Wait for the job (``timeout`` 0 = no limit, NVFlare's meaning) and return its workspace; a job that
        failed or is still running gives None, with the cause printed."""
        if self._done:
            return self._result
        workspace = str(self.hpcflare_run.job_dir.root)
        try:
            self.hpcflare_run.get_result(timeout=timeout or None)
        except HpcflareError as exc:
            print(f"[hpcflare] {exc}", file=sys.stderr, flush=True)
            print(f"[hpcflare] see `hpcflare logs diagnose {workspace}`", file=sys.stderr, flush=True)
            self._done = self.get_status() in FINAL_STATES
            return None
        if not clean_up:
            note("get_result(clean_up=False)", "the job's workspace is always kept")
        self._result, self._done = workspace, True
        print(f"[hpcflare] {self.get_status()}: results in {workspace}", flush=True)
        return self._result

    def abort(self) -> None:
        self.hpcflare_run.abort()


STARTED: list[Run] = []
"""Every Run a job.py started: `hpcflare nvflare` waits for those the script did not wait for itself, as NVFlare's
own processes would have run on after the script returned."""


class _Nvflare(Env):
    """Returns NVFlare's Run from the hpcflare Env it wraps."""

    blocks = False
    """NVFlare's SimEnv runs the job to its end inside execute(); its PocEnv and ProdEnv only submit it."""

    def deploy(self, job_dir: JobDir) -> Run:  # type: ignore[override]
        run = Run(super().deploy(job_dir))  # type: ignore[safe-super]
        if self.blocks:
            run.get_result()
        return run


def _no_effect(kwargs: dict[str, Any], what: dict[str, str]) -> None:
    for key, instead in what.items():
        if kwargs.pop(key, None) is not None:
            note(key, f"accepted; {instead}")
    if kwargs:
        raise TypeError(f"unexpected keyword argument(s) {sorted(kwargs)}")


class SimEnv(_Nvflare, hp.SimEnv):  # type: ignore[misc]  # deploy gives NVFlare's Run
    """NVFlare's SimEnv: ``num_clients`` / ``clients``, ``workspace_root`` (default /tmp/nvflare/simulation);
    every site a process of its own, as NVFlare's simulator runs them; execute() returns when the job ended."""

    blocks = True

    def __init__(
        self,
        *,
        num_clients: int | None = None,
        clients: list[str] | None = None,
        num_threads: int | None = None,
        workspace_root: str = SIM_WORKSPACE,
        **kwargs: Any,
    ) -> None:
        _no_effect(
            kwargs,
            {
                "gpu_config": "sites select their GPUs (CUDA_VISIBLE_DEVICES, or SlurmEnv's placement)",
                "log_config": "every rank writes JSON lines and a readable log under the job's logs/",
                "extra": "",
            },
        )
        if num_threads is not None:
            note("num_threads", "every site runs in a process of its own, all at once")
        hp.SimEnv.__init__(
            self, num_clients=num_clients, clients=clients, workspace_root=workspace_root, processes=True
        )


class PocEnv(_Nvflare, hp.LocalEnv):  # type: ignore[misc]  # deploy gives NVFlare's Run
    """NVFlare's PocEnv: the server and every site a process on this machine (hpcflare's LocalEnv)."""

    def __init__(
        self,
        *,
        num_clients: int | None = None,
        clients: list[str] | None = None,
        poc_workspace: str = POC_WORKSPACE,
        **kwargs: Any,
    ) -> None:
        _no_effect(
            kwargs,
            {
                "gpu_ids": "sites select their GPUs (CUDA_VISIBLE_DEVICES)",
                "use_he": "private aggregation is a recipe option (privacy={'type': 'he'})",
                "docker_image": "sites run as local processes",
                "project_conf_path": "LocalEnv needs no project",
                "username": "",
                "extra": "",
            },
        )
        hp.LocalEnv.__init__(self, job_root=poc_workspace)
        self.sites = sites_from(num_clients, clients)


class ProdEnv(_Nvflare, hp.ProdEnv):  # type: ignore[misc]  # deploy gives NVFlare's Run
    """NVFlare's ProdEnv: submit to a federation's standing server with an admin's startup kit."""

    def __init__(
        self,
        *,
        startup_kit_location: str,
        login_timeout: float = 5.0,
        username: str | None = None,
        **kwargs: Any,
    ) -> None:
        server = kwargs.pop("server", None)
        _no_effect(kwargs, {"extra": ""})
        hp.ProdEnv.__init__(self, startup_kit_location, server, login_timeout, username)


__all__ = ["PocEnv", "ProdEnv", "Run", "SimEnv"]
