"""What a batch script tells Slurm when its step ends: the job's own verdict, not the step's.

srun's exit status is the worst of its tasks', so a job that completed without a dead site, or after excluding
a straggler, would end FAILED and mail its user a false alarm. The sbatch script asks this module instead::

    python -m hpcflare.slurm.verdict JOB_DIR SRUN_RC

It prints one line and exits 0 when the job completed (naming the sites it lost), the exit code of the job's first
cause when it failed or was aborted; a job with no final state (its server rank killed, its node lost) is
recorded failed with that cause and exits with srun's status.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from hpcflare.errors import HpcflareError
from hpcflare.exitcodes import ExitCode, describe
from hpcflare.job import JobDir, JobState
from hpcflare.runtime.cluster.ranks import role_for_rank, tasks_per_node

MEMORY_LINE = re.compile(
    r"^(?:(\d+): )?slurmstepd-(\S+): error: (?:StepId=\S+ exceeded memory limit \((\d+) > (\d+)\)"
    r"|Detected \d+ oom[-_ ]kill event)",
    re.M,
)
"""Slurm's own words when a step goes over its memory (OverMemoryKill: the numbers; cgroup: the OOM kill),
with srun's task label when it gives one."""


def memory_exceeded(job_dir: JobDir, env: Mapping[str, str]) -> str:
    """The job step's memory kill, from this job's Slurm output, as the job's cause ("" when there was none):
    the rank, its role (server, site) and node, and the numbers."""
    job_id = env.get("SLURM_JOB_ID", "")
    path = job_dir.log_dir / f"slurm-{job_id}.out"
    try:
        text = path.read_text(errors="replace") if job_id else ""
    except OSError:
        return ""
    found = MEMORY_LINE.search(text)
    if found is None:
        return ""
    task, node, used, limit = found.groups()
    who = f"task {task} ({_role(job_dir, int(task), env)}) on {node}" if task else f"a rank on {node}"
    numbers = f" ({int(used) / 1e6:.0f} MB > {int(limit) / 1e6:.0f} MB)" if used and limit else ""
    return (
        f"Slurm killed the job step for memory (OUT_OF_MEMORY): {who} went over the job's memory limit{numbers}; "
        "request more memory (--mem), fewer ranks per node, or staging and relays for large models"
    )


def _role(job_dir: JobDir, task: int, env: Mapping[str, str]) -> str:
    try:
        config = job_dir.load_config()
        role = role_for_rank(task, int(env.get("SLURM_NTASKS", "0")), config, tasks_per_node(env))
    except (HpcflareError, ValueError):
        return "rank"
    return role.site or str(role.kind)


def verdict(job_dir: Path, srun_rc: int) -> tuple[int, str]:
    status = JobDir(job_dir).read_status()
    state = str(status.get("state"))
    if state == JobState.COMPLETED:
        lost = status.get("lost") or {}
        return 0, "job completed" + (
            f" without {len(lost)} site(s) lost on the way: "
            + "; ".join(f"{site} ({why})" for site, why in sorted(lost.items())[:10])
            if lost
            else ""
        ) + (f" (srun exited {srun_rc}: those sites' ranks)" if srun_rc and lost else "")
    if state in (JobState.FAILED, JobState.ABORTED):
        code = status.get("exit_code")
        code = int(code) if isinstance(code, int) and 0 < code < 256 else (srun_rc or 1)
        return code, f"job {state}: {status.get('message', '')} (exit {code})"
    # the step is over and the server never recorded an end: it was killed or lost its node. Say so in the
    # status too, so status, diagnose and `job status` do not go on calling the job running.
    memory = memory_exceeded(JobDir(job_dir), os.environ)
    if memory:
        JobDir(job_dir).settle(memory, int(ExitCode.OUT_OF_MEMORY))
        return int(ExitCode.OUT_OF_MEMORY), f"job failed: {memory}"
    cause = (
        f"the server rank ended without recording an end (srun exited {srun_rc}: {describe(srun_rc)}); it was "
        "killed or lost its node: see the slurm-*.out and `sacct -D -j $SLURM_JOB_ID`"
    )
    JobDir(job_dir).settle(cause, srun_rc or 1)
    return srun_rc or 1, f"job {state} when its step ended: {cause}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].lstrip("-").isdigit():
        print("usage: python -m hpcflare.slurm.verdict JOB_DIR SRUN_RC", file=sys.stderr)
        return 2
    rc = int(args[1])
    try:
        code, line = verdict(Path(args[0]), rc)
    except Exception as exc:  # noqa: BLE001 - the step's own status is still the truth we have
        print(f"[hpcflare] srun exited {rc}; the job's status could not be read: {exc}")
        return rc
    print(f"[hpcflare] {line}")
    return code


if __name__ == "__main__":
    sys.exit(main())
