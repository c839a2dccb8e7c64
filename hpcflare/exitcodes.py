"""Exit-code registry: every way a rank can exit has a code and help text (enforced by a test)."""

from __future__ import annotations

import enum
import errno
import signal
import traceback

from hpcflare import errors


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL_ERROR = 1
    CONFIG_ERROR = 10
    REGISTRATION_TIMEOUT = 11
    ROUND_FAILED = 12
    DISK_FULL = 13
    SERVER_LOST = 20
    UPDATE_REJECTED = 21
    TRAIN_SCRIPT_FAILED = 22
    TRANSPORT_ERROR = 23
    CERTIFICATE_ERROR = 24
    POLICY_REFUSED = 25
    AUTH_REFUSED = 26
    PEER_LOST = 27
    ABORTED = 30
    TIME_LIMIT = 31
    NODE_LOST = 32
    OUT_OF_MEMORY = 33


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "The rank finished its part of the job.",
    ExitCode.INTERNAL_ERROR: "Unexpected error inside hpcflare; see the rank's .log/.jsonl for the traceback and report it.",
    ExitCode.CONFIG_ERROR: "The job config or settings profile is invalid or missing; the log names the key. Fix job.yaml / configs/*.yaml.",
    ExitCode.REGISTRATION_TIMEOUT: "Fewer than min_clients clients could join: sites that failed at start are "
    "named first with their own cause (fix that); sites that stayed silent until settings.registration_timeout are "
    "listed after (start them, lower min_clients or raise registration_timeout).",
    ExitCode.ROUND_FAILED: "A round closed with fewer than min_clients valid results (clients died, were rejected or exceeded settings.round_timeout); see the server log for which.",
    ExitCode.DISK_FULL: "A write failed with 'No space left on device' (or over quota); the log names the path. Free "
    "space there, or move the job dir / staging_dir / HPCFLARE_SPOOL_DIR to a larger filesystem, "
    "then `hpcflare job resume JOB_DIR` (the last checkpoint is intact).",
    ExitCode.SERVER_LOST: "The client could not reach the server for settings.server_lost_timeout; check that the server rank is alive and reachable.",
    ExitCode.UPDATE_REJECTED: "The server refused this client's update (wrong shape/dtype, NaN/Inf, stale round); the log gives the reason. Fix the training script.",
    ExitCode.TRAIN_SCRIPT_FAILED: "The client's training script raised an exception; the traceback is in the client's log.",
    ExitCode.TRANSPORT_ERROR: "A transfer failed (oversized frame, stalled stream, malformed message); the log names the limit or deadline to change.",
    ExitCode.CERTIFICATE_ERROR: "A TLS peer refused this rank's certificate or the other way round (expired, issued by "
    "another project's CA, a name not in the project); the log says which. Issue a fresh "
    "startup kit with hpcflare provision (--add NAME) and check node clocks.",
    ExitCode.POLICY_REFUSED: "The site's policy (policy in its startup kit's kit.yaml) refuses to run this job's "
    "training script; the site's admin must allow the exact file (allowed_scripts) first.",
    ExitCode.AUTH_REFUSED: "The server refused this site's registration: its name is not one of the job's sites, "
    "or it proved neither its name (a startup kit of that name) nor its membership of the job (the job's secret). "
    "The server's log says which; check the site's kit and that the admin named this site in the job.",
    ExitCode.PEER_LOST: "A collective this site was part of (XGBoost's histogram allreduce) lost another member, "
    "so this site stopped with it: nothing to fix here. The job's status and `hpcflare logs diagnose` name the "
    "member that was lost first.",
    ExitCode.TIME_LIMIT: "The job reached its Slurm time limit once more than it may be requeued "
    "(settings.max_requeues, submitit's max_num_timeout). Raise --time (SlurmEnv(time=...)) or settings.max_requeues, "
    "then `hpcflare job resume JOB_DIR --env slurm` continues from the last completed round.",
    ExitCode.NODE_LOST: "Slurm lost a node of the job (NODE_FAIL: the node went down or stopped answering) and "
    "ended the job; nothing in the job caused it. hpcflare's jobs ask Slurm to requeue them (--requeue), so Slurm "
    "usually restarts the job on healthy nodes and it resumes from its last completed round; if it did not "
    "(--no-requeue, or the cluster forbids requeues), `hpcflare job resume JOB_DIR --env slurm`. If it recurs, tell the "
    "cluster's admins which node (sacct -D -j JOB -o JobID,State,NodeList).",
    ExitCode.OUT_OF_MEMORY: "A rank used more memory than the job asked Slurm for (--mem, --mem-per-cpu), and Slurm "
    "killed the job step (or the kernel's OOM killer killed the rank); the message names the rank, its site and "
    "node, and the numbers. Request more memory, put fewer ranks on a node, or for large models enable staging "
    "and relays (one copy of the model per node); then `hpcflare job resume JOB_DIR --env slurm`.",
    ExitCode.ABORTED: "The job was aborted (hpcflare abort, Run.abort(), SIGTERM), or the training script was still "
    "running settings.end_grace after the job ended and was stopped.",
}


SIGNAL_LIKE = (
    int(signal.SIGABRT),
    int(signal.SIGKILL),
    int(signal.SIGSEGV),
    int(signal.SIGBUS),
    int(signal.SIGTERM),
)
"""Exit codes that srun and sacct use for a rank killed by that signal."""
SIGNAL_HINTS = {
    int(signal.SIGKILL): ": often the OOM killer (sacct OUT_OF_MEMORY), scancel or a node's cleanup",
    int(signal.SIGTERM): ": scancel, preemption, a time limit or an abort",
    int(signal.SIGSEGV): ": a crash in native code (a library or driver)",
}


def describe(code: int) -> str:
    """Human text for an exit code, also for codes hpcflare does not own (signals, shells)."""
    try:
        return f"{ExitCode(code).name}: {HELP[ExitCode(code)]}"
    except ValueError:
        if code < 0 or code > 128:
            sig = -code if code < 0 else code - 128
            if sig == 14:
                return (
                    "killed by signal 14 (SIGALRM): with rendezvous 'mpi', MPI initialisation outlived "
                    "settings.rendezvous_timeout, usually because another rank of the step died in srun's PMI "
                    "exchange (see the slurm-*.out for 'mpi/pmi2' errors); resubmit, or use rendezvous 'fs', "
                    "which needs no MPI"
                )
            return f"killed by signal {sig} (9 = SIGKILL, often the OOM killer; 15 = SIGTERM, preemption or abort)"
        if code in SIGNAL_LIKE:  # srun and sacct report a task killed by a signal with the signal's number
            name = signal.Signals(code).name
            return (
                f"exit code {code}: not an hpcflare code; from srun or sacct it is signal {code} ({name}) that "
                f"ended the rank{SIGNAL_HINTS.get(code, '')}; from a script of yours, sys.exit({code})"
            )
        return (
            f"unknown exit code {code} (not an hpcflare code; the training script may have called sys.exit)"
        )


# most specific first: the first class an exception is an instance of decides its code
_BY_ERROR: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (errors.ConfigError, ExitCode.CONFIG_ERROR),
    (errors.PolicyRefusedError, ExitCode.POLICY_REFUSED),
    (errors.CertificateError, ExitCode.CERTIFICATE_ERROR),
    (errors.RegistrationRefusedError, ExitCode.AUTH_REFUSED),
    (errors.UpdateRejectedError, ExitCode.UPDATE_REJECTED),
    (errors.CollectiveLostError, ExitCode.PEER_LOST),
    (errors.PeerGoneError, ExitCode.SERVER_LOST),
    (errors.TransportError, ExitCode.TRANSPORT_ERROR),
    (errors.RegistrationTimeoutError, ExitCode.REGISTRATION_TIMEOUT),
    (errors.RoundFailedError, ExitCode.ROUND_FAILED),
    (errors.JobAbortedError, ExitCode.ABORTED),
    (errors.NodeLostError, ExitCode.NODE_LOST),
    (errors.TimeLimitError, ExitCode.TIME_LIMIT),
    (errors.OutOfMemoryError, ExitCode.OUT_OF_MEMORY),
)


def exit_for(exc: BaseException, user_code: bool = False) -> tuple[ExitCode, str]:
    """The one place an exception becomes an exit code and a reason, for every role (server, relay,
    client, launcher). ``user_code``: the exception may come from the training script, so anything that
    is not an hpcflare error is the script's failure rather than an internal one."""
    for kind, code in _BY_ERROR:
        if isinstance(exc, kind):
            return code, str(exc)
    if type(exc).__module__.startswith("submitit") and type(exc).__name__ == "UncompletedJobError":
        # submitit raises it in the rank when the time limit comes once more than it may requeue
        return ExitCode.TIME_LIMIT, f"Slurm's time limit, after the last requeue allowed ({exc})"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExitCode.DISK_FULL, f"disk full at {exc.filename or '?'}: {exc.strerror}"
    if user_code and isinstance(exc, Exception):
        return ExitCode.TRAIN_SCRIPT_FAILED, f"{type(exc).__name__}: {exc}"
    return ExitCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"


def needs_traceback(code: ExitCode) -> bool:
    """Codes whose traceback helps (a failure in code, a failed write): it goes to the rank's log."""
    return code in (ExitCode.TRAIN_SCRIPT_FAILED, ExitCode.INTERNAL_ERROR, ExitCode.DISK_FULL)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


EXTRAS = {
    "torch": "torch",
    "mpi4py": "mpi",
    "tensorboard": "tracking",
    "mlflow": "tracking",
    "wandb": "wandb",
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "matplotlib": "plots",
    "transformers": "llm",
    "peft": "llm",
    "xgboost": "tabular",
    "sklearn": "tabular",
    "tenseal": "he",
    "mkdocs": "docs",
}
"""Optional packages -> the extra that installs them."""


def explain_failure(exc: BaseException) -> tuple[int, str] | None:
    """An expected failure as (exit status, one line with the cause and what to do); None for anything else (a
    bug, whose traceback helps)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted (Ctrl-C)"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRAS:
            return int(
                ExitCode.CONFIG_ERROR
            ), f"{top} is not installed: pip install 'hpcflare[{EXTRAS[top]}]'"
    if isinstance(exc, errors.HpcflareError):
        code, reason = exit_for(exc)
        return int(code), reason
    return None


def install_error_hook(verbose: bool = False) -> None:
    """Expected failures of a command (configuration, a missing extra, a failed job, Ctrl-C) end with one line
    on stderr instead of a traceback; ``verbose`` (or HPCFLARE_VERBOSE=1) keeps the traceback."""
    import os
    import sys

    verbose = verbose or os.environ.get("HPCFLARE_VERBOSE") == "1"

    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        explained = None if verbose else explain_failure(exc)
        if explained is None:
            sys.__excepthook__(kind, exc, tb)  # type: ignore[arg-type]
            return
        print(
            f"error: {explained[1]}" + ("" if verbose else " (-v or HPCFLARE_VERBOSE=1 shows the traceback)"),
            file=sys.stderr,
        )

    sys.excepthook = hook
