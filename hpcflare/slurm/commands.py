"""Thin wrappers over sbatch/squeue/sacct/scontrol/scancel with clear errors; the runner is injectable for tests."""

from __future__ import annotations

import getpass
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from hpcflare.errors import HpcflareError
from hpcflare.exitcodes import exit_for
from hpcflare.job import JobDir
from hpcflare.runtime.cluster.scheduler_end import slurm_end

Runner = Callable[[Sequence[str], float], subprocess.CompletedProcess]
COMMAND_TIMEOUT = 60.0
"""Deadline of one Slurm client command (sbatch, squeue, ...)."""
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def settle_ended(job_dir: JobDir, job_id: str, state: str) -> None:
    """A Slurm job that ended before its server recorded an end (scancel, a lost node): its status says so,
    Slurm's cause first (a status the server already made final is kept). A requeued or preempted job has not
    ended: such a state is only named."""
    error = slurm_end(state, job_id) if state not in ("REQUEUED", "PREEMPTED") else None
    words = str(error) if error is not None else f"Slurm job {job_id} ended ({state})"
    job_dir.settle(
        f"{words} before the server recorded an end; run `hpcflare logs diagnose {job_dir.root}`",
        int(exit_for(error)[0]) if error is not None else None,
    )


class SlurmError(HpcflareError):
    """A Slurm command failed."""


class SlurmNotFoundError(SlurmError):
    """Slurm's client commands are not installed or not on PATH."""


class SubmissionRejectedError(SlurmError):
    """sbatch refused the job (bad partition, time limit, resources...)."""


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


class SlurmCommands:
    def __init__(self, runner: Runner = run_command, timeout: float = COMMAND_TIMEOUT) -> None:
        self.runner, self.timeout = runner, timeout

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        try:
            return self.runner(argv, self.timeout)
        except FileNotFoundError:
            raise SlurmNotFoundError(
                f"`{argv[0]}` not found: Slurm's client commands are not installed here. "
                "On a dev machine run `bash slurm/dev-cluster-up.sh`; on a cluster, load its "
                "Slurm module, or use LocalEnv"
            ) from None
        except subprocess.TimeoutExpired:
            raise SlurmError(
                f"`{' '.join(argv)}` did not answer within {self.timeout:g}s; is slurmctld up "
                "(`scontrol ping`)?"
            ) from None

    def submit(self, script: Path, extra_args: Sequence[str] = ()) -> str:
        proc = self._run(["sbatch", "--parsable", *extra_args, str(script)])
        if proc.returncode != 0:
            raise SubmissionRejectedError(
                f"sbatch rejected {script}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        match = re.match(
            r"^\s*(\d+)(?:;\S+)?\s*$", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        )
        if not match:
            raise SlurmError(f"could not read a job id from sbatch output {proc.stdout.strip()!r}")
        return match.group(1)

    def state(self, job_id: str) -> str:
        """Job state from squeue (live), else sacct (accounting), else scontrol; UNKNOWN if none knows it."""
        proc = self._run(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()[0]
        proc = self._run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"])
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()[0].split()[0]
        proc = self._run(["scontrol", "show", "job", job_id])
        match = re.search(r"JobState=(\S+)", proc.stdout) if proc.returncode == 0 else None
        return match.group(1) if match else "UNKNOWN"

    def pending_reason(self, job_id: str) -> str:
        """Why a job waits, in words (squeue's reason code and what it means); '' if it is not pending."""
        proc = self._run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
        if proc.returncode != 0 or not proc.stdout.strip():
            return ""
        state, _, code = proc.stdout.strip().splitlines()[0].partition("|")
        if state != "PENDING":
            return ""
        return f"{code}: {explain_reason(code)}"

    def cpus_per_node(self, partition: str | None) -> tuple[str, int] | None:
        """(partition, CPUs of its smallest node) from sinfo; the default partition when None; None if unknown."""
        try:
            proc = self._run(["sinfo", "-h", "-o", "%P %c"])
        except SlurmError:
            return None
        if proc.returncode != 0:
            return None
        sizes: dict[str, int] = {}
        default = None
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[1].rstrip("+").isdigit():
                continue
            name = parts[0].rstrip("*")
            if parts[0].endswith("*"):
                default = name
            sizes[name] = min(sizes.get(name, 1 << 30), int(parts[1].rstrip("+")))
        name = partition or default
        return (name, sizes[name]) if name in sizes else None

    def cancel(self, job_id: str) -> None:
        proc = self._run(["scancel", job_id])
        if proc.returncode != 0:
            raise SlurmError(f"scancel {job_id} failed: {proc.stderr.strip()}")

    def requeue(self, job_id: str) -> None:
        """Put a job back in the queue (``scontrol requeue``): what a node failure or preemption does to it."""
        proc = self._run(["scontrol", "requeue", job_id])
        if proc.returncode != 0:
            raise SlurmError(f"scontrol requeue {job_id} failed: {proc.stderr.strip()}")

    def list_jobs(self) -> list[dict[str, str]]:
        """This user's jobs (squeue -u), with the reason each pending one waits."""
        proc = self._run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%j|%T|%M|%D|%R"])
        if proc.returncode != 0:
            raise SlurmError(f"squeue failed: {proc.stderr.strip()}")
        keys = ("job_id", "name", "state", "time", "nodes", "reason")
        return [dict(zip(keys, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]

    def accounting(self, job_id: str) -> list[dict[str, str]]:
        """Every step of every life of a job from sacct (-D: a requeued job's earlier lives too; State, ExitCode,
        MaxRSS, ReqMem, ...); [] without accounting."""
        keys = ("JobID", "JobName", "State", "ExitCode", "MaxRSS", "ReqMem", "Elapsed", "NodeList")
        proc = self._run(["sacct", "-n", "-P", "-D", "-j", job_id, "-o", ",".join(keys)])
        if proc.returncode != 0:
            return []  # no slurmdbd: diagnose falls back to the Slurm output files
        return [
            dict(zip(keys, line.split("|")))
            for line in proc.stdout.splitlines()
            if line.count("|") == len(keys) - 1
        ]


PENDING_REASONS = {
    "Resources": "waiting for enough free nodes/CPUs/memory; it starts when they free up",
    "Priority": "other jobs in the queue have higher priority",
    "Dependency": "waiting for another job to finish first (a --separate clients job waits for its server)",
    "DependencyNeverSatisfied": "the job it depends on failed: it will never start; cancel and resubmit",
    "BeginTime": "it was asked to start later (--begin)",
    "JobHeldUser": "held by its owner: scontrol release <id>",
    "JobHeldAdmin": "held by an administrator",
    "PartitionTimeLimit": "its --time is longer than the partition allows: lower --time",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows: lower --nodes",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "QOSMaxCpuPerUserLimit": "your QOS caps the CPUs you may use at once: wait for your other jobs or use --qos",
    "QOSMaxJobsPerUserLimit": "your QOS caps how many jobs you may run at once",
    "AssocGrpCpuLimit": "your account's CPU allocation is in use by your group's other jobs",
    "AssocMaxJobsLimit": "your account may not run more jobs at once",
    "Reservation": "waiting for its reservation to start",
    "None": "just submitted; the scheduler has not looked at it yet",
}
"""squeue's reason codes for a PENDING job, in words (`hpcflare job status` and `job list` show them)."""


def explain_reason(code: str) -> str:
    return PENDING_REASONS.get(code.strip("()"), "see `scontrol show job <id>` (Reason=)")
