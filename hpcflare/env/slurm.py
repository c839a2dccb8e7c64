"""SlurmEnv: submit a job to Slurm through submitit; MpiEnv: run the same ranks under mpiexec.

Getting an allocation (submitit/sbatch, the provider) is separate from starting ranks inside it
(srun runs hpcflare.runtime.cluster.ranks on every task; role by rank).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import submitit

from hpcflare.env.api import Env, Run, deadline_after
from hpcflare.errors import ConfigError, JobFailedError
from hpcflare.exitcodes import ExitCode, describe
from hpcflare.fileio import atomic_write_text
from hpcflare.job import JobDir, whole_number
from hpcflare.runtime.client_rank import settle_clients_per_rank
from hpcflare.runtime.cluster.memory import MALLOC_ENV
from hpcflare.runtime.cluster.ranks import RankInfo
from hpcflare.runtime.launch import run_rank
from hpcflare.security.jobs import prepare_job
from hpcflare.settings import upper_bound
from hpcflare.slurm.commands import FINAL_STATES, SlurmCommands, settle_ended
from hpcflare.slurm.spec import Allocation

_DRY_RUN_SBATCH = """#!/bin/sh
# hpcflare dry run: keep the script submitit hands to sbatch, submit nothing
cp "$1" "$HPCFLARE_DRY_RUN_CAPTURE"
echo "Submitted batch job 0"
"""


class SubmititRank(submitit.helpers.Checkpointable):
    """What runs on every Slurm task (pickled by reference: hpcflare must be importable on the nodes).

    Checkpointable: at the time limit (or a preemption) submitit calls ``checkpoint`` on rank 0 and requeues
    the job with the same arguments; the server then resumes from its last completed round (a new
    incarnation), so ``SlurmEnv(time=...)`` never ends in "timed-out and not checkpointable"."""

    def __call__(self, job_dir: str, rendezvous: str) -> int:
        env = submitit.JobEnvironment()
        info = RankInfo(env.global_rank, env.num_tasks, "submitit")
        code = run_rank(JobDir(job_dir), info, rendezvous)
        if code != ExitCode.OK:
            raise RuntimeError(f"rank {info.rank} exited {int(code)}: {describe(int(code))}")
        return int(code)


submitit_rank = SubmititRank()


class SlurmRun(Run):
    def __init__(self, job_dir: JobDir, job: Any, commands: SlurmCommands | None = None) -> None:
        super().__init__(job_dir)
        self.job = job
        self.slurm_job_id = str(job.job_id)
        atomic_write_text(
            job_dir.root / "slurm_job_id", self.slurm_job_id + "\n"
        )  # for hpcflare job/logs commands
        self.commands = commands or SlurmCommands()

    def slurm_state(self) -> str:
        """squeue/sacct/scontrol's view (works without slurmdbd, unlike submitit's sacct-only state)."""
        return self.commands.state(self.slurm_job_id)

    def get_status(self) -> dict[str, Any]:
        return {**super().get_status(), "slurm_job_id": self.slurm_job_id, "slurm_state": self.slurm_state()}

    def wait(self, timeout: float | None) -> bool:
        deadline = deadline_after(timeout)
        while (state := self.slurm_state()) not in FINAL_STATES | {"UNKNOWN"}:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)
        settle_ended(self.job_dir, self.slurm_job_id, state)
        return True

    def abort(self) -> None:
        self.job.cancel(check=False)


class SlurmEnv(Env):
    """``recipe.execute(SlurmEnv(nodes=2, ntasks_per_node=2, partition="debug", time="00:30:00"))``."""

    def __init__(
        self,
        nodes: int = 1,
        ntasks_per_node: int | None = None,
        partition: str | None = None,
        time: str | int = "00:30:00",
        job_root: str | Path = "jobs",
        rendezvous: str = "fs",
        setup: list[str] | None = None,
        slurm_args: dict[str, Any] | None = None,
        slurm_additional_parameters: dict[str, Any] | None = None,
        clients_per_rank: int | str | None = None,
        **sbatch_options: Any,
    ) -> None:
        """``clients_per_rank``: sites per client rank (virtual clients; default: the job's; 'auto' = a rank per
        site while the ranks fit the partition's CPUs, else sites packed into the ranks that fit);
        ``sbatch_options``: account=, qos=, cpus_per_task=, mem=, mem_per_cpu=, gres=, gpus=, gpus_per_task=,
        constraint=, exclusive=, reservation=, mail_type=, mail_user=, overcommit= (hpcflare.slurm.spec.NAMED);
        ``slurm_additional_parameters``: any other sbatch option by name; ``slurm_args``: raw submitit keywords."""
        super().__init__(job_root)
        self.allocation = Allocation(
            nodes, ntasks_per_node, partition, time, dict(slurm_additional_parameters or {}), sbatch_options
        )
        self.allocation.minutes()  # a bad time limit is refused here, not at submission
        if not self.allocation.fixed_nodes:
            raise ConfigError(
                f"nodes={nodes!r}: submitit needs a fixed node count (SlurmEnv); node ranges work "
                "with `hpcflare job submit --nodes 2-4`"
            )
        self.rendezvous, self.setup, self.slurm_args = rendezvous, list(setup or []), dict(slurm_args or {})
        self.clients_per_rank = clients_per_rank

    def executor(self, job_dir: JobDir) -> Any:
        config = job_dir.load_config()
        ranks = 1 + config.relays + len(config.client_units())
        alloc = self.allocation
        per_node = alloc.per_node(ranks)
        if per_node * alloc.nodes < ranks:
            raise ConfigError(
                f"{alloc.nodes} nodes x {per_node} tasks < {ranks} ranks (1 server + {config.relays} relays "
                f"+ {len(config.client_units())} client ranks)"
            )
        alloc.check_partition(SlurmCommands(), ranks)  # explain now what would otherwise sit PENDING for ever
        slurm_args = dict(self.slurm_args)
        # submitit's own name for it: how many time limits (and preemptions) the job may resume from
        requeues = slurm_args.pop("max_num_timeout", None)
        if requeues is None:
            requeues = config.load_settings().max_requeues
        executor = submitit.SlurmExecutor(
            folder=job_dir.root / "slurm",
            python=sys.executable,
            max_num_timeout=whole_number(
                "slurm_args max_num_timeout", requeues, 0, int(upper_bound("max_requeues"))
            ),
        )
        setup = [f"export {k}=${{{k}:-{v}}}" for k, v in MALLOC_ENV.items()] + self.setup
        params = alloc.submitit_parameters(ranks)
        params["additional_parameters"] = {"requeue": True, **params["additional_parameters"]}
        executor.update_parameters(
            **params,
            job_name=config.name,
            setup=setup,
            srun_args=["--mpi=pmi2"] if self.rendezvous == "mpi" else [],
            **slurm_args,
        )
        return executor

    def _settle(self, job_dir: JobDir) -> None:
        """clients_per_rank into job.yaml; 'auto': a rank per site while they fit the partition's CPUs (sinfo),
        else the sites packed evenly into the ranks that fit."""
        settle_clients_per_rank(
            job_dir,
            self.clients_per_rank,
            lambda config: self.allocation.client_slots(SlurmCommands(), 1 + config.relays),
        )

    def dry_run(self, job: JobDir | Any) -> str:
        """The exact sbatch script submitit would submit for this job; nothing is submitted.

        submitit has no public call that renders its script, so the real submission path runs against a
        stand-in ``sbatch`` that keeps the script and queues nothing; submitit's bookkeeping is removed after.
        """
        job_dir = job if isinstance(job, JobDir) else job.export(self.job_root)
        before = job_dir.config_path.read_text()
        try:  # the script as deploy would submit it, without leaving what it settled in job.yaml
            self._settle(job_dir)
            executor = self.executor(job_dir)
        finally:
            if job_dir.config_path.read_text() != before:
                atomic_write_text(job_dir.config_path, before)
        folder = job_dir.root / "slurm"
        existed = folder.exists()
        with tempfile.TemporaryDirectory(prefix="hpcflare-dry-run-") as fake:
            capture = Path(fake) / "job.sbatch"
            sbatch = Path(fake) / "sbatch"
            sbatch.write_text(_DRY_RUN_SBATCH)
            sbatch.chmod(0o755)
            saved = {k: os.environ.get(k) for k in ("PATH", "HPCFLARE_DRY_RUN_CAPTURE")}
            os.environ.update(
                PATH=f"{fake}{os.pathsep}{saved['PATH'] or ''}", HPCFLARE_DRY_RUN_CAPTURE=str(capture)
            )
            try:
                executor.submit(submitit_rank, str(job_dir.root), self.rendezvous)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            text = capture.read_text()
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        atomic_write_text(job_dir.root / "job.sbatch", text)
        return text

    def deploy(self, job_dir: JobDir) -> Run:
        job_dir.check_deployable()
        self._settle(job_dir)  # before the kits: client ranks get their own
        prepare_job(job_dir, secure_default=True)  # mutual TLS by default on Slurm
        job = self.executor(job_dir).submit(submitit_rank, str(job_dir.root), self.rendezvous)
        print(
            f"[hpcflare] job {job_dir.root.name} submitted to Slurm as {job.job_id}; logs in {job_dir.log_dir}",
            flush=True,
        )
        return SlurmRun(job_dir, job)


SubmititEnv = SlurmEnv


class MpiRun(Run):
    def __init__(self, job_dir: JobDir, proc: subprocess.Popen) -> None:
        super().__init__(job_dir)
        self.proc = proc

    def wait(self, timeout: float | None) -> bool:
        try:
            code = self.proc.wait(None if timeout is None else max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        self.job_dir.settle(
            f"mpiexec exited {code} before the server recorded an end ({describe(code)}); see "
            f"{self.job_dir.log_dir / 'mpiexec.out'}",
            code,
        )
        return True

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

    def __init__(
        self,
        job_root: str | Path = "jobs",
        mpiexec: str | None = None,
        extra_args: list[str] | None = None,
        clients_per_rank: int | str | None = None,
    ) -> None:
        super().__init__(job_root)
        self.clients_per_rank = clients_per_rank
        self.mpiexec = mpiexec or str(Path(sys.executable).with_name("mpiexec"))
        self.extra_args = list(extra_args or [])

    def deploy(self, job_dir: JobDir) -> Run:
        if not Path(self.mpiexec).exists():
            raise ConfigError(f"mpiexec not found at {self.mpiexec}; `pip install mpich` or pass mpiexec=")
        job_dir.check_deployable()
        settle_clients_per_rank(job_dir, self.clients_per_rank)
        config = prepare_job(job_dir, secure_default=True)
        if config.relays:
            raise ConfigError(
                "relays find each other through the job directory; MpiEnv exchanges addresses over "
                "MPI only: use LocalEnv or SlurmEnv(rendezvous='fs') with relays"
            )
        ranks = 1 + len(config.client_units())
        out = open(job_dir.log_dir / "mpiexec.out", "wb")
        cmd = [
            self.mpiexec,
            "-n",
            str(ranks),
            *self.extra_args,
            sys.executable,
            "-m",
            "hpcflare.runtime.launch",
            "--job-dir",
            str(job_dir.root),
            "--role",
            "auto",
            "--rendezvous",
            "mpi",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        out.close()
        return MpiRun(job_dir, proc)


__all__ = ["MpiEnv", "SlurmEnv", "SubmititEnv", "JobFailedError"]
