"""Why the scheduler is ending this job, asked when a rank receives SIGTERM under Slurm.

Slurm sends SIGTERM for several reasons: a lost node, the time limit, scancel, a requeue or a preemption. The
server asks Slurm which one it was, so the job's end names Slurm's cause instead of "SIGTERM received".
sacct (with slurmdbd) gives the job's state at once (NODE_FAIL, TIMEOUT, CANCELLED, REQUEUED...); without
accounting, scontrol's reason tells a lost node (NodeDown) and the time limit (TimeLimit) apart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

from hpcflare import errors

SLURM_QUERY_TIMEOUT = 5.0
"""Seconds each Slurm query (sacct, then scontrol) may take when a rank is told to stop: Slurm kills the rank
KillWait (30 s by default) after its SIGTERM, and the job must still record its end before that."""

_BY_REASON = {"NodeDown": "NODE_FAIL", "TimeLimit": "TIMEOUT"}


def _query(argv: Sequence[str], timeout: float) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def slurm_state(job_id: str, timeout: float = SLURM_QUERY_TIMEOUT) -> str:
    """The job's state as Slurm has it while it ends it: NODE_FAIL, TIMEOUT, CANCELLED, REQUEUED, PREEMPTED...;
    "" when Slurm cannot say."""
    rows = _query(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"], timeout).split("\n")
    lives = [row.split()[0].rstrip("+") for row in rows if row.strip()]  # "CANCELLED by 0"
    state = lives[-1] if lives else ""  # -D: every life; the last is this one
    if state not in ("", "RUNNING", "PENDING", "COMPLETING"):
        return state
    fields = _query(["scontrol", "show", "job", "-o", job_id], timeout).split()
    reason = next((f.split("=", 1)[1] for f in fields if f.startswith("Reason=")), "")
    return _BY_REASON.get(reason, "")


RESUMES = ": its next life resumes from the last completed round"
SLURM_ENDS: dict[str, tuple[str, type[errors.HpcflareError]]] = {
    "NODE_FAIL": ("Slurm lost a node of job {id} (NODE_FAIL)", errors.NodeLostError),
    "TIMEOUT": ("Slurm job {id} reached its time limit (TIMEOUT{more})", errors.TimeLimitError),
    "DEADLINE": ("Slurm job {id} reached its deadline (DEADLINE{more})", errors.TimeLimitError),
    "CANCELLED": ("Slurm job {id} was cancelled (scancel or hpcflare job abort)", errors.JobAbortedError),
    "OUT_OF_MEMORY": ("Slurm killed job {id} for its memory (OUT_OF_MEMORY)", errors.OutOfMemoryError),
    "REQUEUED": ("Slurm requeued job {id}" + RESUMES, errors.JobAbortedError),
    "PREEMPTED": ("Slurm preempted job {id}" + RESUMES, errors.JobAbortedError),
}
"""Slurm's end of a job in words, cause first, and the error (so the exit code) that names it: what a rank
told to stop says, and what `hpcflare job status` records for a job whose server could not."""


def slurm_end(state: str, job_id: str, more: str = "") -> errors.HpcflareError | None:
    """The error for Slurm ``state`` of job ``job_id`` (None for a state that is not an end Slurm caused);
    ``more``: what the time-limit states add in their parentheses."""
    if state not in SLURM_ENDS:
        return None
    words, kind = SLURM_ENDS[state]
    return kind(words.format(id=job_id, more=more))


def ending_error(
    env: Mapping[str, str], query: Callable[[str], str] = slurm_state
) -> errors.HpcflareError | None:
    """The error that names why Slurm is ending this job (None outside Slurm or when Slurm cannot say)."""
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id:
        return None
    restarts = env.get("SLURM_RESTART_COUNT", "0")
    return slurm_end(query(job_id), job_id, f"; requeued {restarts} time(s) before")
