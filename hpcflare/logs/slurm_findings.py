"""What Slurm and submitit say about a job: their output files, sacct's accounting, and the job's lives.

A requeued job has several lives (one per ``server_started``); what ended an earlier life (every rank's
SIGTERM at the requeue, a client losing the server meanwhile) is summarised as that life's end, not listed
rank by rank as errors of the job.
"""

from __future__ import annotations

import re
from typing import Any

from hpcflare.exitcodes import ExitCode, describe
from hpcflare.job import JobDir
from hpcflare.logs.finding import Finding
from hpcflare.slurm.commands import SlurmCommands, SlurmError

RESUME = (
    "continue it with `hpcflare job resume JOB_DIR --env slurm` (it resumes from the last completed round)"
)

# (pattern, severity, what happened, fix) over Slurm's output files and submitit's logs
NODE_FAILURE = re.compile(r"Node failure on|DUE TO NODE FAIL", re.I)
STEP_CANCELLED = re.compile(r"\*\*\* STEP \S+ ON \S+ CANCELLED AT")
"""Slurm cancels the steps of a node it lost: with a node failure in the same output, a consequence."""
TIME_LIMIT = re.compile(r"DUE TO TIME LIMIT", re.I)
OOM = re.compile(r"oom[-_ ]kill|Out Of Memory|OUT_OF_MEMORY|exceeded (job )?memory limit", re.I)
KILLED = re.compile(r"task \d+: Killed|killed by signal 9|Killed: 9")
ECHOES: dict[ExitCode, tuple[tuple[str, ...], tuple[re.Pattern[str], ...]]] = {
    ExitCode.NODE_LOST: (("NODE_FAIL",), (NODE_FAILURE,)),
    ExitCode.TIME_LIMIT: (("TIMEOUT",), (TIME_LIMIT,)),
    ExitCode.ABORTED: (("CANCELLED",), (STEP_CANCELLED,)),
    ExitCode.OUT_OF_MEMORY: (("OUT_OF_MEMORY", "CANCELLED"), (OOM, STEP_CANCELLED, KILLED)),
}
"""The Slurm state (sacct) and output line that only repeat a job's recorded end of that code: the server asked
Slurm why it was ended, and its own finding already says so."""
ECHO_FIX = "Slurm's side of the job's own finding above"
SLURM_PATTERNS = [
    (
        OOM,
        "error",
        "a rank was killed for exceeding its memory (OOM)",
        "request more memory (--mem) or fewer ranks per node; large models: enable staging, use relays",
    ),
    (
        TIME_LIMIT,
        "error",
        "Slurm stopped the job at its time limit",
        f"raise --time; {RESUME}",
    ),
    (
        re.compile(r"DUE TO PREEMPTION", re.I),
        "warning",
        "the job was preempted",
        "nothing to do if it was requeued: it resumes from the last completed round",
    ),
    (
        re.compile(r"time limit near: requeueing", re.I),
        "info",
        "the job requeued itself before its time limit (sbatch --signal=B:USR1 lead)",
        "",
    ),
    (
        re.compile(r"Job not requeued because: timed-out and not checkpointable"),
        "error",
        "submitit stopped the job at its time limit without requeueing it (the submitted function was not "
        "checkpointable: a job submitted by an older hpcflare)",
        f"SlurmEnv's rank function is checkpointable now, so a new submission requeues itself; {RESUME}",
    ),
    (
        re.compile(r"Job not requeued because: timed-out too many times"),
        "error",
        "submitit gave up requeueing at the time limit (too many requeues)",
        f"raise SlurmEnv(time=...) so fewer requeues are needed; {RESUME}",
    ),
    (
        re.compile(r"Caught signal SIGUSR2 on .*: this job is timed-out"),
        "info",
        "submitit caught the time-limit signal (USR2) and checkpointed the job for a requeue",
        "",
    ),
    (
        re.compile(r"Caught signal SIGUSR2 on .*: this job is preempted"),
        "info",
        "submitit caught a preemption signal (USR2) and requeued the job",
        "",
    ),
    (
        NODE_FAILURE,
        "error",
        "a node of the job was lost (Slurm: node failure)",
        "resubmit, or let Slurm requeue it (--requeue): it resumes from its last completed round; if it recurs, "
        "tell the cluster's admins which node (sacct -D -j JOB -o JobID,State,NodeList)",
    ),
    (
        STEP_CANCELLED,
        "warning",
        "a job step was cancelled (scancel)",
        "nothing to do if you cancelled it; otherwise find who ran scancel / hpcflare job abort",
    ),
    (
        KILLED,
        "error",
        "a rank was killed with signal 9 (SIGKILL: the OOM killer, or scancel --signal=KILL)",
        "check sacct's MaxRSS and the node's kernel log; request more --mem if it was memory",
    ),
]


SACCT_STATES = {
    "OUT_OF_MEMORY": (
        "error",
        "ran out of memory (OOM kill)",
        "request more memory (--mem / --mem-per-cpu) or fewer ranks per node; for large models "
        "enable staging and relays (one copy of the model per node)",
    ),
    "TIMEOUT": ("error", "hit its time limit", f"raise --time; {RESUME}"),
    "PREEMPTED": (
        "warning",
        "was preempted",
        "nothing to do if it was requeued (--requeue is in hpcflare's sbatch "
        "script): it resumes from the last completed round",
    ),
    "NODE_FAIL": (
        "error",
        "lost a node",
        "resubmit or requeue: the job resumes from its last completed round",
    ),
    "CANCELLED": (
        "warning",
        "was cancelled",
        "someone ran scancel / hpcflare job abort, or Slurm cancelled it",
    ),
    "FAILED": ("error", "failed", ""),
}


def output_findings(job_dir: JobDir, completed: bool, recorded: int | None = None) -> list[Finding]:
    """Slurm's output files and submitit's logs; once the job completed, what it survived is only info.
    ``recorded``: the exit code of the end the job recorded (what Slurm's lines only repeat is info)."""
    echo = ECHOES[ExitCode(recorded)][1] if recorded in ECHOES else ()
    out = []
    paths = sorted(job_dir.log_dir.glob("slurm-*.out")) + sorted((job_dir.root / "slurm").glob("*_log.*"))
    for path in paths:
        text = path.read_text(errors="replace")
        node_lost = bool(NODE_FAILURE.search(text))
        for pattern, severity, what, fix in SLURM_PATTERNS:
            if pattern.search(text):
                if completed and severity != "info":
                    severity, fix = "info", "nothing to do: the job completed"
                elif pattern in echo:
                    severity, fix = "info", ECHO_FIX
                elif node_lost and pattern is STEP_CANCELLED:  # Slurm cancels the steps of a lost node
                    severity, fix = "info", "a consequence of the node failure above"
                out.append(Finding(severity, f"{path.name}: {what}", fix))
    return out


def sacct_findings(
    job_dir: JobDir, commands: Any = None, completed: bool = False, recorded: bool | int = False
) -> list[Finding]:
    """Slurm's accounting view of the job's allocations (OOM kills, time limits, preemption, node failures).
    ``recorded``: the job logged its own failure (True, or its exit code), so a step Slurm marks FAILED only
    echoes it, as does the allocation's state that the server read from Slurm (ECHOES)."""
    echo = ECHOES[ExitCode(recorded)][0] if recorded in ECHOES and recorded is not True else ()
    ids = [
        p.read_text().strip()
        for p in (job_dir.root / "slurm_job_id", job_dir.root / "slurm_clients_job_id")
        if p.is_file()
    ]
    if not ids:
        return []
    commands = commands or SlurmCommands()
    out = []
    for job_id in ids:
        try:
            steps = commands.accounting(job_id)
        except SlurmError:
            return out
        lives = split_lives(steps)
        for number, life in enumerate(lives, 1):
            ended = _state(life[0])
            for step in life:
                finding = _step_finding(step, completed, recorded, len(lives) > 1)
                state = _state(step)
                if finding and number == len(lives) and (ended in echo or state in echo):
                    finding = Finding("info", finding.what, ECHO_FIX)
                if finding and step is not life[0] and finding.severity != "info":
                    if ended == "NODE_FAIL":  # Slurm ends a lost node's steps: a consequence
                        finding = Finding("info", finding.what, "a consequence of the node failure above")
                    elif number < len(lives):  # an earlier life's steps ended with that life
                        finding = Finding("info", finding.what, f"ended with life {number} of the job")
                if finding:
                    out.append(finding)
    return out


def split_lives(steps: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """sacct -D's rows, one list per life of the job (each life starts with the allocation's own row)."""
    lives: list[list[dict[str, str]]] = []
    for step in steps:
        if "." not in step.get("JobID", "") or not lives:
            lives.append([])
        lives[-1].append(step)
    return lives


def _state(step: dict[str, str]) -> str:
    """A sacct row's state without its qualifier ("CANCELLED by 0" -> CANCELLED)."""
    return step.get("State", "").split()[0] if step.get("State") else ""


def _step_finding(step: dict[str, str], completed: bool, recorded: bool, requeued: bool) -> Finding | None:
    state = _state(step)
    if state not in SACCT_STATES:
        return None
    severity, what, fix = SACCT_STATES[state]
    if completed and state in ("TIMEOUT", "PREEMPTED", "NODE_FAIL", "CANCELLED"):
        severity, fix = (
            ("info", "nothing to do: the job was requeued and completed")
            if requeued
            else (
                "warning",
                "the job completed without this step's ranks: status.json's lost names their sites",
            )
        )
    rss = ""
    if step.get("MaxRSS"):
        asked = f" of {step['ReqMem']} requested" if step.get("ReqMem", "").strip() else ""
        rss = f" (MaxRSS {step['MaxRSS']}{asked})"
    code = step.get("ExitCode", "0:0").split(":")[0]
    if state == "FAILED" and recorded:
        severity, fix = "info", "Slurm's record of the job's failure: its cause is the job's own finding"
    elif state == "FAILED" and code.isdigit():
        fix = describe(int(code))
    return Finding(
        severity,
        f"sacct: Slurm step {step['JobID']} ({step.get('JobName', '')}) {what}{rss} on {step.get('NodeList', '?')}",
        fix,
    )


def life_starts(server: list[dict[str, Any]]) -> list[float]:
    """When each life of the job began (the server's start times)."""
    return sorted(float(e.get("t", 0)) for e in server if e.get("event") == "server_started")


def earlier_lives(ranks: dict[str, list[dict[str, Any]]], starts: list[float]) -> tuple[list[Finding], float]:
    """One finding per earlier life (how it ended, how many ranks stopped), and when the last life began:
    events before that belong to a life that was requeued, not to what went wrong with the job."""
    if len(starts) < 2:
        return [], float("-inf")
    out = []
    server = ranks.get("server", [])
    for number, (begin, end) in enumerate(zip(starts, starts[1:]), 1):
        stopped: dict[str, int] = {}
        for events in ranks.values():
            for e in events:
                if begin <= float(e.get("t", 0)) < end and e.get("event") in (
                    "client_failed",
                    "script_stopped",
                    "job_failed",
                    "relay_failed",
                ):
                    name = (
                        ExitCode(e["exit_code"]).name
                        if e.get("exit_code") in ExitCode.__members__.values()
                        else "stopped"
                    )
                    stopped[name] = stopped.get(name, 0) + 1
                    break
        rounds = [
            e.get("round")
            for e in server
            if e.get("event") == "round_completed" and begin <= float(e.get("t", 0)) < end
        ]
        summary = (
            ", ".join(f"{n} {code}" for code, n in sorted(stopped.items())) or "no rank reported its end"
        )
        out.append(
            Finding(
                "info",
                f"life {number} of the job ended after round {max(rounds, default=0)} "
                f"(requeued or restarted; {summary}); the next life resumed from its checkpoint",
            )
        )
    return out, starts[-1]
