"""SlurmEnv: submit a job to Slurm through submitit; MpiEnv: run the same ranks under mpiexec.

Getting an allocation (submitit/sbatch, the provider) is separate from starting ranks inside it
(srun runs hpcflare.runtime.ranks on every task; role by rank).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hpcflare.env.api import Env, Run, deadline_after
from hpcflare.errors import ConfigError, JobFailedError
from hpcflare.exitcodes import ExitCode, describe
from hpcflare.job import JobDir
from hpcflare.security.jobs import prepare_job
from hpcflare.runtime.memory import MALLOC_ENV
from hpcflare.runtime.ranks import RankInfo, run_rank
from hpcflare.slurm.commands import FINAL_STATES, SlurmCommands


def submitit_rank(job_dir: str, rendezvous: str) -> int:
    """Runs on every Slurm task (pickled by reference: hpcflare must be importable on the nodes)."""
    import submitit

    env = submitit.JobEnvironment()
    info = RankInfo(env.global_rank, env.num_tasks, "submitit")
    code = run_rank(JobDir(job_dir), info, rendezvous)
    if code != ExitCode.OK:
        raise RuntimeError(f"rank {info.rank} exited {int(code)}: {describe(int(code))}")
    return int(code)


class SlurmRun(Run):
    def __init__(self, job_dir: JobDir, job: Any, commands: SlurmCommands | None = None) -> None:
        super().__init__(job_dir)
        self.job = job
        self.slurm_job_id = str(job.job_id)
        (job_dir.root / "slurm_job_id").write_text(self.slurm_job_id + "\n")  # for hpcflare job/logs commands
        self.commands = commands or SlurmCommands()

    def slurm_state(self) -> str:
        """squeue/sacct/scontrol's view (works without slurmdbd, unlike submitit's sacct-only state)."""
        return self.commands.state(self.slurm_job_id)

    def get_status(self) -> dict[str, Any]:
        return {**super().get_status(), "slurm_job_id": self.slurm_job_id, "slurm_state": self.slurm_state()}

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = deadline_after(timeout)
        while self.slurm_state() not in FINAL_STATES | {"UNKNOWN"}:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)
        return True

    def rank_errors(self) -> list[str]:
        try:
            self.job.results()
            return []
        except Exception as exc:  # noqa: BLE001 - submitit re-raises the first failing task's error
            return [str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)]

    def abort(self) -> None:
        self.job.cancel(check=False)


class SlurmEnv(Env):
    """``recipe.execute(SlurmEnv(nodes=2, ntasks_per_node=2, partition="debug", time="00:30:00"))``."""

    def __init__(self, nodes: int = 1, ntasks_per_node: int | None = None, partition: str | None = None,
                 time: str | int = "00:30:00", job_root: str | Path = "jobs", rendezvous: str = "fs",
                 setup: list[str] | None = None, slurm_args: dict[str, Any] | None = None) -> None:
        super().__init__(job_root)
        self.nodes, self.ntasks_per_node, self.partition = nodes, ntasks_per_node, partition
        self.time_min = _minutes(time)
        self.rendezvous, self.setup, self.slurm_args = rendezvous, list(setup or []), dict(slurm_args or {})

    def executor(self, job_dir: JobDir) -> Any:
        import submitit

        config = job_dir.load_config()
        ranks = 1 + config.relays + len(config.clients)
        per_node = self.ntasks_per_node or math.ceil(ranks / self.nodes)
        if per_node * self.nodes < ranks:
            raise ConfigError(f"{self.nodes} nodes x {per_node} tasks < {ranks} ranks (1 server + {config.relays} relays "
                              f"+ {len(config.clients)} clients)")
        executor = submitit.SlurmExecutor(folder=job_dir.root / "slurm", python=sys.executable)
        setup = [f"export {k}=${{{k}:-{v}}}" for k, v in MALLOC_ENV.items()] + self.setup
        params: dict[str, Any] = dict(nodes=self.nodes, ntasks_per_node=per_node, time=self.time_min,
                                      job_name=job_dir.load_config().name, setup=setup,
                                      srun_args=["--mpi=pmi2"] if self.rendezvous == "mpi" else [],
                                      additional_parameters={"requeue": True}, **self.slurm_args)
        if self.partition:
            params["partition"] = self.partition
        executor.update_parameters(**params)
        return executor

    def dry_run(self, job: JobDir | Any) -> str:
        """The exact sbatch script submitit will submit for this job (nothing is submitted)."""
        job_dir = job if isinstance(job, JobDir) else job.export(self.job_root)
        executor = self.executor(job_dir)
        text = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
        (job_dir.root / "job.sbatch").write_text(text)
        return text

    def deploy(self, job_dir: JobDir) -> Run:
        prepare_job(job_dir, secure_default=True)  # mutual TLS by default on Slurm
        job = self.executor(job_dir).submit(submitit_rank, str(job_dir.root), self.rendezvous)
        print(f"[hpcflare] job {job_dir.root.name} submitted to Slurm as {job.job_id}; logs in {job_dir.log_dir}",
              flush=True)
        return SlurmRun(job_dir, job)


SubmititEnv = SlurmEnv


class MpiRun(Run):
    def __init__(self, job_dir: JobDir, proc: subprocess.Popen) -> None:
        super().__init__(job_dir)
        self.proc = proc

    def wait(self, timeout: Optional[float]) -> bool:
        try:
            self.proc.wait(None if timeout is None else max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def abort(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class MpiEnv(Env):
    """All ranks under one ``mpiexec`` (PyPI mpich wheel), addresses exchanged by MPI broadcast."""

    def __init__(self, job_root: str | Path = "jobs", mpiexec: str | None = None, extra_args: list[str] | None = None) -> None:
        super().__init__(job_root)
        self.mpiexec = mpiexec or str(Path(sys.executable).with_name("mpiexec"))
        self.extra_args = list(extra_args or [])

    def deploy(self, job_dir: JobDir) -> Run:
        if not Path(self.mpiexec).exists():
            raise ConfigError(f"mpiexec not found at {self.mpiexec}; `pip install mpich` or pass mpiexec=")
        config = prepare_job(job_dir, secure_default=True)
        if config.relays:
            raise ConfigError("relays find each other through the job directory; MpiEnv exchanges addresses over "
                              "MPI only: use LocalEnv or SlurmEnv(rendezvous='fs') with relays")
        ranks = 1 + len(config.clients)
        out = open(job_dir.log_dir / "mpiexec.out", "wb")
        cmd = [self.mpiexec, "-n", str(ranks), *self.extra_args, sys.executable, "-m", "hpcflare.runtime.launch",
               "--job-dir", str(job_dir.root), "--role", "auto", "--rendezvous", "mpi"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        out.close()
        return MpiRun(job_dir, proc)


def _minutes(value: str | int) -> int:
    if isinstance(value, int):
        return value
    parts = [int(p) for p in value.replace("-", ":").split(":")]
    if "-" in value:  # D-HH:MM:SS
        days, rest = parts[0], parts[1:] + [0] * (3 - len(parts[1:]))
        return days * 1440 + rest[0] * 60 + rest[1] + math.ceil(rest[2] / 60)
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + math.ceil(parts[2] / 60)
    if len(parts) == 2:
        return parts[0] + math.ceil(parts[1] / 60)
    return parts[0]


__all__ = ["MpiEnv", "SlurmEnv", "SubmititEnv", "JobFailedError"]
