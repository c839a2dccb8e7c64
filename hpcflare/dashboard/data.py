"""What the dashboard shows, read from job folders alone (status, logs, tracking, the metrics files), so it works
for a running job, a finished one and one whose ranks are long gone, on any route (local, sbatch, submitit,
federation)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.job import FINAL_STATES, JobDir
from hpcflare.logs.diagnose import diagnose, read_events
from hpcflare.logs.plot import read_metrics
from hpcflare.monitoring.series import read_series

MAX_JOBS = 500
"""Jobs listed at most (the most recently changed ones)."""
SEARCH_DEPTH = 3
"""Folder levels below the root searched for job.yaml (a job root, a standing server's store)."""
MAX_FOLDERS = 20_000
"""Folders looked at when searching for jobs (a root holding huge unrelated trees stays fast)."""
CHART_RANKS = 16
"""Ranks drawn in the system charts (the busiest by memory); every rank stays in the series file."""


def find_jobs(root: Path) -> dict[str, JobDir]:
    """Job folders under ``root`` (or ``root`` itself), by job id, most recent first. A folder holding a
    job.yaml is a job and is not searched further; at most SEARCH_DEPTH levels and MAX_FOLDERS folders."""
    root = root.resolve()
    found: list[Path] = []
    frontier, visited = [root], 0
    for _ in range(SEARCH_DEPTH + 1):
        below: list[Path] = []
        for folder in frontier:
            visited += 1
            if (folder / "job.yaml").is_file():
                found.append(folder)
                continue
            try:
                below += [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            except OSError:
                continue
        frontier = sorted(below)[: max(0, MAX_FOLDERS - visited)]
    jobs: dict[str, JobDir] = {}
    for folder in sorted(found, key=_changed, reverse=True)[:MAX_JOBS]:
        job = JobDir(folder)
        jobs.setdefault(_job_id(job), job)
    return jobs


def _changed(folder: Path) -> float:
    for name in ("status.json", "job.yaml"):
        try:
            return (folder / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def _job_id(job: JobDir) -> str:
    try:
        return job.load_config().job_id
    except (ConfigError, OSError):
        return job.root.name


def summary(job_id: str, job: JobDir) -> dict[str, Any]:
    """One row of the job list: state, round x of N, ETA, sites live/dead."""
    status = job.read_status()
    try:
        config = job.load_config()
        name, clients, rounds = config.name, len(config.clients), config.num_rounds
    except (ConfigError, OSError) as exc:
        return {"id": job_id, "name": job.root.name, "state": "unreadable", "message": str(exc)}
    series = read_series(job.root / "metrics" / "series.jsonl", limit=1)
    latest = series[-1] if series else {}
    sites = latest.get("sites") or {}
    number = int(status.get("round") or latest.get("round") or 0)
    return {
        "id": job_id,
        "name": name,
        "path": str(job.root),
        "state": str(status.get("state")),
        "message": status.get("message", ""),
        "round": number,
        "num_rounds": rounds,
        "clients": clients,
        "live": sites.get("registered", 0) + sites.get("active", 0) if sites else None,
        "dead": sites.get("dead", 0) + sites.get("failed", 0) if sites else None,
        "eta_seconds": _eta(job, rounds, status),
        "updated": status.get("updated"),
    }


def _eta(job: JobDir, rounds: int, status: dict[str, Any]) -> float | None:
    if str(status.get("state")) in FINAL_STATES:
        return None
    done = [e for e in _server_events(job) if e.get("event") == "round_completed"]
    if not done:
        return None
    per_round = sum(float(e.get("seconds") or 0) for e in done) / len(done)
    return max(0.0, per_round * (rounds - len(done)))


_EVENTS: dict[Path, tuple[float, int, list[dict[str, Any]]]] = {}
_EVENTS_LOCK = threading.Lock()


def _server_events(job: JobDir) -> list[dict[str, Any]]:
    """The server's events, re-read only when its log grew."""
    path = job.log_dir / "server.jsonl"
    try:
        stat = path.stat()
    except OSError:
        return []
    with _EVENTS_LOCK:
        cached = _EVENTS.get(path)
        if cached and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
    events = read_events(path)[0]
    with _EVENTS_LOCK:
        _EVENTS[path] = (stat.st_mtime, stat.st_size, events)
    return events


def training_metrics(job: JobDir) -> dict[str, dict[str, list[list[float]]]]:
    """metric -> site (and 'global') -> [[round, value], ...] from tracking/metrics.csv."""
    return {
        metric: {site: [[r, rounds[r]] for r in sorted(rounds)] for site, rounds in sites.items()}
        for metric, sites in read_metrics(job, missing_ok=True).items()
    }


def system_metrics(job: JobDir) -> dict[str, Any]:
    """Series for the system charts: time (s since the first sample) per rank, and the job's totals."""
    series = read_series(job.root / "metrics" / "series.jsonl")
    if not series:
        return {"t": [], "ranks": {}, "bytes_in": [], "bytes_out": []}
    t0 = float(series[0].get("t", 0))
    last = series[-1].get("ranks") or {}
    busiest = sorted(last, key=lambda r: -float(last[r].get("rss_bytes", 0)))[:CHART_RANKS]
    ranks: dict[str, dict[str, list[Any]]] = {
        r: {"cpu_percent": [], "rss_bytes": [], "gpu_utilization": []} for r in busiest
    }
    for record in series:
        for rank in busiest:
            sample = (record.get("ranks") or {}).get(rank) or {}
            for key, values in ranks[rank].items():
                values.append(sample.get(key))
    return {
        "t": [round(float(r.get("t", 0)) - t0, 1) for r in series],
        "ranks": ranks,
        "bytes_in": [r.get("bytes_in", 0) for r in series],
        "bytes_out": [r.get("bytes_out", 0) for r in series],
        "live": [
            (r.get("sites") or {}).get("registered", 0) + (r.get("sites") or {}).get("active", 0)
            for r in series
        ],
    }


def site_table(job: JobDir, findings: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per site: state, last seen, its last round and how long its result took, bytes, and the first cause
    `logs diagnose` gives for it."""
    try:
        clients = job.load_config().clients
    except (ConfigError, OSError):
        return []
    view: dict[str, Any] = {}
    try:
        view = json.loads((job.root / "metrics" / "sites.json").read_text()).get("sites") or {}
    except (OSError, ValueError, AttributeError):
        pass
    started: dict[int, float] = {}
    last: dict[str, tuple[int, float]] = {}
    states: dict[str, str] = {}
    for e in _server_events(job):
        event, site = e.get("event"), e.get("site")
        if event == "round_started":
            started[int(e.get("round") or 0)] = float(e.get("t", 0))
        elif event == "result_accepted" and site:
            number = int(e.get("round") or 0)
            last[site] = (number, float(e.get("t", 0)) - started.get(number, float(e.get("t", 0))))
        elif event in ("client_dead", "client_failed", "client_done") and site:
            states[site] = event.removeprefix("client_")
        elif event == "clients_excluded":
            for s in e.get("missing") or []:
                states[s] = "excluded"
    rows = []
    for site in clients:
        seen = view.get(site) or {}
        cause = next((f["what"] for f in findings if f["severity"] != "info" and _names(f["what"], site)), "")
        number, took = last.get(site, (None, None))
        rows.append(
            {
                "site": site,
                "state": seen.get("state") or states.get(site) or "unknown",
                "last_seen": seen.get("last_seen"),
                "round": number,
                "round_seconds": round(took, 2) if took is not None else None,
                "bytes_in": seen.get("bytes_in"),
                "bytes_out": seen.get("bytes_out"),
                "cause": cause,
            }
        )
    return rows


def _names(text: str, site: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(site)}(?![\w-])", text) is not None


_FINDINGS: dict[Path, tuple[float, list[dict[str, str]]]] = {}


def logs_changed(job: JobDir) -> float:
    """When any rank's JSON log last changed: what the findings and the timeline are cached against."""
    stamps = []
    for path in job.log_dir.glob("*.jsonl"):
        try:
            stamps.append(path.stat().st_mtime)
        except OSError:  # removed between listing and looking
            continue
    return max(stamps, default=0.0)


def findings(job: JobDir) -> list[dict[str, str]]:
    """`hpcflare logs diagnose`'s findings, recomputed when a log changed."""
    stamp = logs_changed(job)
    cached = _FINDINGS.get(job.root)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        found, _ = diagnose(job)
        out = [{"severity": f.severity, "what": f.what, "fix": f.fix} for f in found]
    except Exception as exc:  # noqa: BLE001 - a half-written job folder: say so, keep serving
        out = [{"severity": "warning", "what": f"diagnose could not read this job yet: {exc}", "fix": ""}]
    _FINDINGS[job.root] = (stamp, out)
    return out


def detail(job_id: str, job: JobDir) -> dict[str, Any]:
    found = findings(job)
    return {
        "summary": summary(job_id, job),
        "sites": site_table(job, found),
        "findings": found,
        "training": training_metrics(job),
        "system": system_metrics(job),
        "time": time.time(),
    }
