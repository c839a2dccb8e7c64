"""`hpcflare logs diagnose JOB_DIR`: explain from a job's logs alone what went wrong and what to set.

Reads every rank's JSON-lines log (and Slurm's output files when present); each finding names the rank,
the round, the cause, and the setting or action that fixes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcflare.exitcodes import HELP, ExitCode, describe
from hpcflare.job import JobDir, JobState
from hpcflare.logs.finding import Finding
from hpcflare.logs.slurm_findings import earlier_lives, life_starts, output_findings, sacct_findings


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """One rank's events; malformed lines (a rank killed mid-write) are counted, not fatal."""
    events, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            bad += 1
    return events, bad


def load_events(log_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """rank -> events, and the count of malformed lines over all ranks."""
    ranks: dict[str, list[dict[str, Any]]] = {}
    bad = 0
    for path in sorted(log_dir.glob("*.jsonl")):
        ranks[path.stem], skipped = read_events(path)
        bad += skipped
    return ranks, bad


def _named(events: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


def _dead_findings(
    dead: list[dict[str, Any]], config: Any, settings: Any, status: dict[str, Any]
) -> list[Finding]:
    """One finding per rank that died: a client rank's (or client group's) sites under it, not one by one; a
    warning when the job completed without them."""
    names = {e["site"] for e in dead}
    host_of = {site: unit for unit, sites in config.client_units().items() for site in sites if unit != site}
    under: dict[str, list[str]] = {}
    for e in dead:
        host = host_of.get(e["site"])
        if host in names:
            under.setdefault(host, []).append(e["site"])
    severity = "warning" if status.get("state") == JobState.COMPLETED else "error"
    out = []
    for e in dead:
        if host_of.get(e["site"]) in names:
            continue  # told with its rank
        why = e["msg"].split(": ", 1)[-1]
        sites = sorted(under.get(e["site"], []))
        with_sites = (
            f" with its {len(sites)} site(s) {sites[:8]}{' ...' if len(sites) > 8 else ''}" if sites else ""
        )
        timeout = (
            f"settings.server_lost_timeout (now {settings.server_lost_timeout:g}s)"
            if "server_lost_timeout" in why
            else f"settings.heartbeat_timeout (now {settings.heartbeat_timeout:g}s)"
        )
        out.append(
            Finding(
                severity,
                f"{e['site']} died in round {e.get('round')}{with_sites} ({why})",
                "the process was killed or its node was lost (OOM? see Slurm output); if it was only busy, raise "
                + timeout
                + ("; the job completed without it" if severity == "warning" else ""),
            )
        )
    return out


STOPPING = (ExitCode.ABORTED, ExitCode.NODE_LOST, ExitCode.TIME_LIMIT)
"""Recorded ends of a job that stop every rank with it: a rank's own ABORTED exit then only follows from it."""


def federation_part(job_dir: JobDir) -> dict[str, Any] | None:
    """The site agent's record when ``job_dir`` is a site's part of a federation job (the job's server runs
    beside the standing server, not here), else None."""
    try:
        record = json.loads(job_dir.agent_record.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "state" in record else None


def diagnose(job_dir: JobDir, commands: Any = None) -> tuple[list[Finding], dict[str, Any]]:
    config = job_dir.load_config()
    settings = config.load_settings()
    ranks, bad = load_events(job_dir.log_dir)
    status = job_dir.read_status()
    part = federation_part(job_dir)
    out, current = earlier_lives(ranks, life_starts(ranks.get("server", [])))
    # what ended an earlier life (a requeue's SIGTERM to every rank) is that life's summary above, not an error
    ranks = {rank: [e for e in events if float(e.get("t", 0)) >= current] for rank, events in ranks.items()}
    server = ranks.get("server", [])
    if part is not None:  # a site's part: its ranks' logs are here, the job's server's at the standing server
        site, state = str(part.get("site") or "this site"), str(part["state"])
        out.append(
            Finding(
                "error" if state == "failed" else "warning" if state in ("refused", "aborted") else "info",
                f"{site}'s part of federation job {config.job_id}: {state}"
                + (f": {part['detail']}" if part.get("detail") else ""),
                "the job's server runs beside the standing server: `hpcflare admin status JOB_ID` shows every "
                "site, `hpcflare admin download` brings the server's log",
            )
        )
    elif not server:
        out.append(
            Finding(
                "error",
                "the server never logged anything: it did not start",
                "check the scheduler's output (logs/slurm-*.out, logs/server.out) for a launch error",
            )
        )
    failed = _named(server, "job_failed")
    ended = failed[-1].get("exit_code") if failed else None  # the code of the end the server recorded
    registered = {e["site"] for e in _named(server, "client_registered")}
    never = sorted(set(config.clients) - registered)
    starting = {site for e in _named(server, "sites_starting") for site in e.get("sites", [])}
    for e in _named(server, "clients_excluded"):
        if e.get("never_registered"):
            alive = sorted(set(e["never_registered"]) & starting)
            fix = (
                f"{alive} were alive but still starting: find what their scripts do before flare.init() "
                f"(logs/<site>.log, .out), or raise settings.startup_timeout (now {settings.startup_timeout:g}s, "
                f"try {settings.startup_timeout * 2:g})"
                if alive
                else "check that they started (logs/<site>.log, .out); if they are just slow to start, "
                f"raise settings.registration_timeout (now {settings.registration_timeout:g}s, "
                f"try {settings.registration_timeout * 2:g})"
            )
            out.append(Finding("warning", f"clients never registered: {e['never_registered']}", fix))
    own_reports = {
        rank
        for rank, events in ranks.items()
        if rank != "server" and any(e.get("exit_code") for e in _named(events, "client_failed"))
    }
    for e in _named(server, "client_failed"):
        if e["site"] in own_reports:
            continue  # the site's own log says more (its exit code)
        out.append(
            Finding(
                "error",
                f"{e['site']} failed: {e.get('reason', '?')}",
                f"see logs/{e['site']}.log for the traceback",
            )
        )
    out += _dead_findings(_named(server, "client_dead"), config, settings, status)
    for e in _named(server, "stragglers"):
        out.append(
            Finding(
                "warning",
                f"round {e['round']}: closed at round_timeout without {e['stragglers']}",
                f"raise settings.round_timeout (now {settings.round_timeout:g}s, try "
                f"{settings.round_timeout * 2:g}) if these clients are just slow",
            )
        )
    for e in _named(server, "result_rejected"):
        out.append(
            Finding(
                "error",
                f"round {e.get('round')}: result from {e['site']} rejected: {e.get('reason')}",
                "fix the training script's output (shapes/dtypes must match the global model; no NaN/Inf)",
            )
        )
    for e in _named(server, "transfer_stalled"):
        out.append(
            Finding(
                "warning",
                e["msg"],
                "a peer stopped sending/reading: check it is alive and not swapping; "
                f"raise settings.stream_idle_timeout (now {settings.stream_idle_timeout:g}s) for slow links",
            )
        )
    for rank, events in sorted(ranks.items()):
        for e in _named(events, "job_failed") + _named(events, "client_failed"):
            if rank == "server" and e.get("event") == "job_failed":
                continue  # the job's own verdict above says it
            if e.get("exit_code") == ExitCode.DISK_FULL:
                out.append(Finding("error", f"{rank}: {e.get('reason', e['msg'])}", HELP[ExitCode.DISK_FULL]))
        for e in _named(events, "host_stalled"):
            out.append(
                Finding(
                    "warning",
                    f"{rank} was stopped for {e.get('seconds')}s: {e['msg'].split(';')[0]}",
                    f"nobody was declared dead for it; find what froze {rank} (SIGSTOP, swapping, a hung "
                    "filesystem: check the node's memory and mounts)",
                )
            )
    for e in _named(server, "late_result"):
        out.append(Finding("info", e["msg"]))
    for e in _named(server, "settings_conflict"):
        out.append(
            Finding("warning", f"settings: {e['msg']}", "align the named settings in configs/ or job.yaml")
        )
    out += _security_findings(ranks)
    for e in _named(server, "early_stopped"):
        out.append(Finding("info", e["msg"]))
    for e in _named(server, "key_metric_missing")[:1]:
        out.append(
            Finding(
                "warning",
                e["msg"],
                "send the metric in FLModel.metrics (or flare.log) or change key_metric in job.yaml",
            )
        )
    for e in _named(server, "round_skipped")[:1]:
        out.append(Finding("info", e["msg"]))
    for e in _named(server, "resumed"):
        out.append(Finding("info", e["msg"]))
    for rank, events in sorted(ranks.items()):
        if rank == "server":
            continue
        for e in _named(events, "script_stopped"):
            out.append(
                Finding(
                    "warning",
                    f"{rank}: training script stopped: {e.get('reason')}",
                    "let the script return when flare.is_running() is False; if it is just slow to "
                    "finish, raise settings.end_grace",
                )
            )
        for e in _named(events, "relay_lost"):
            out.append(Finding("warning", f"{rank}: {e['msg']}", "check the relay's log and node"))
        out += _client_api_findings(rank, events, settings)
        for e in _named(events, "client_failed"):
            code = e.get("exit_code")
            if code == ExitCode.SERVER_LOST:
                out.append(
                    Finding(
                        "error",
                        f"{rank} lost the server: {e.get('reason', '')[:200]}",
                        f"check the server rank; raise settings.server_lost_timeout (now "
                        f"{settings.server_lost_timeout:g}s) only for flaky networks",
                    )
                )
            elif code == ExitCode.PEER_LOST:
                out.append(
                    Finding("info", f"{rank} stopped with its collective: {str(e.get('reason', ''))[:300]}")
                )
            elif code == ExitCode.ABORTED and ended in STOPPING:
                out.append(
                    Finding("info", f"{rank} was stopped with the job ({str(e.get('reason', ''))[:200]})")
                )
            elif isinstance(code, int) and code in ExitCode.__members__.values():
                out.append(
                    Finding(
                        "error",
                        f"{rank} exited {ExitCode(code).name} ({code}): {str(e.get('reason', ''))[:400]}",
                        HELP[ExitCode(code)],
                    )
                )
    completed = status.get("state") == JobState.COMPLETED
    settled = (  # an end recorded for the server (the batch script's verdict, job status, LocalEnv)
        not failed
        and status.get("state") in (JobState.FAILED, JobState.ABORTED)
        and bool(status.get("message"))
    )
    if settled and isinstance(status.get("exit_code"), int):
        ended = status["exit_code"]
    out += output_findings(job_dir, completed, ended)
    recorded = (ended or True) if failed or settled else False
    out += sacct_findings(job_dir, commands, completed, recorded=recorded)
    if failed:  # the job's own verdict names its first cause: it comes first, what followed from it after
        code = failed[-1].get("exit_code", 1)
        out.insert(
            0,
            Finding(
                "error",
                f"the job {status.get('state', 'failed')}: {failed[-1].get('reason')}",
                describe(code),
            ),
        )
    rounds = [e["round"] for e in _named(server, "round_completed")] + [
        e["round"] for e in _named(server, "resumed")
    ]
    summary = {
        "job_id": config.job_id,
        "state": status.get("state"),
        "rounds_completed": max(rounds, default=0),
        "num_rounds": config.num_rounds,
        "clients": len(config.clients),
        "registered": len(registered),
        "never_registered": never,
        "malformed_log_lines": bad,
        "part_of": None if part is None else str(part.get("site") or "this site"),
    }
    if part is not None:
        summary["state"] = str(part["state"])
        return out, summary
    alive = _server_alive(job_dir, settings.metrics_interval)
    if status.get("state") not in (JobState.COMPLETED, None) and not failed and alive is not None:
        out.append(
            Finding(
                "info", f"the job is {status.get('state')}: its server wrote its metrics {alive:.0f}s ago"
            )
        )
    elif status.get("state") not in (JobState.COMPLETED, None) and not failed:
        out.insert(
            0 if settled else len(out),  # a recorded cause comes first, as the server's own would
            Finding(
                "error",
                f"the job is {status.get('state')} and the server logged no final state: "
                + (
                    str(status["message"])  # recorded for it (LocalEnv, the batch script's verdict)
                    if status.get("message") and status.get("state") in (JobState.FAILED, JobState.ABORTED)
                    else "it was killed (SIGKILL, OOM, node failure) or is still running"
                ),
                describe(int(status["exit_code"]))
                if settled and isinstance(status.get("exit_code"), int)
                else "check the scheduler's output and `hpcflare job status`",
            ),
        )
    return out, summary


def _server_alive(job_dir: JobDir, interval: float) -> float | None:
    """Seconds since the server last appended to its metrics series, when that is recent (it does so every
    settings.metrics_interval while it lives); None when it is not."""
    try:
        age = time.time() - (job_dir.root / "metrics" / "series.jsonl").stat().st_mtime
    except OSError:
        return None
    return age if age < 3 * interval + 5 else None


def _client_api_findings(rank: str, events: list[dict[str, Any]], settings: Any) -> list[Finding]:
    """NVFlare-script and tracking problems a site hit, with the option that fixes each."""
    out = []
    for e in _named(events, "client_failed"):
        reason = str(e.get("reason", ""))
        if "No module named 'nvflare" in reason and "provides" not in reason:
            out.append(
                Finding(
                    "error",
                    f"{rank}: the script imports NVFlare, which is not served here",
                    "set the job option nvflare_compat: on ('auto' stays off where a real nvflare is "
                    "importable), or port the imports to hpcflare.client (README 'Coming from NVFlare')",
                )
            )
        elif "hpcflare's NVFlare compatibility" in reason:
            out.append(
                Finding(
                    "error",
                    f"{rank}: the script imports an NVFlare module hpcflare does not provide",
                    "port that import (README 'Coming from NVFlare' lists what is served)",
                )
            )
    dropped = _named(events, "tracking_dropped")
    if dropped:
        out.append(
            Finding(
                "warning",
                f"{rank}: tracking records dropped in round(s) "
                f"{sorted({str(e.get('round')) for e in dropped})}",
                "log less often, or raise settings.tracking_max_records_per_round (now "
                f"{settings.tracking_max_records_per_round})",
            )
        )
    for e in _named(events, "tracking_lost")[:1]:
        out.append(
            Finding("warning", f"{rank}: {e['msg']}", "check the server's log for the Track calls it refused")
        )
    return out


def _security_findings(ranks: dict[str, list[dict[str, Any]]]) -> list[Finding]:
    """Refused TLS connections and identities, and certificates a rank found wrong with its own kit."""
    out = []
    for rank, events in sorted(ranks.items()):
        seen: set[str] = set()
        for e in _named(events, "tls_refused") + _named(events, "identity_refused"):
            if e["msg"] in seen:
                continue
            seen.add(e["msg"])
            out.append(
                Finding(
                    "error",
                    f"{rank}: {e['msg']}",
                    "give every site its own kit from one `hpcflare provision` run; add a missing site "
                    "with `hpcflare provision OUT/<project> --add NAME`; re-issue expired kits",
                )
            )
        for e in _named(events, "certificate_problem"):
            out.append(
                Finding(
                    "warning",
                    f"{rank}: {e['msg']}",
                    "issue a fresh kit: hpcflare provision OUT/<project> "
                    f"--add {rank} (after removing the old one), or check this node's clock",
                )
            )
    return out


def report(job_dir: JobDir, commands: Any = None) -> str:
    findings, s = diagnose(job_dir, commands)
    lines = [
        f"job {s['job_id']}: {s['state']}; {s['rounds_completed']}/{s['num_rounds']} rounds completed; "
        f"{s['registered']}/{s['clients']} clients registered"
    ]
    if s["part_of"]:
        lines = [f"job {s['job_id']}, {s['part_of']}'s part: {s['state']}"]
    elif s["state"] != JobState.COMPLETED:
        lines.append(f"the job stopped in round {s['rounds_completed'] + 1}")
    order = {"error": 0, "warning": 1, "info": 2}
    lines += [f.render() for f in sorted(findings, key=lambda f: order[f.severity])] or ["no problems found"]
    if s["malformed_log_lines"]:
        lines.append(f"(skipped {s['malformed_log_lines']} malformed log lines: a rank died mid-write)")
    return "\n".join(lines)
