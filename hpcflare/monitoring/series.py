"""The job's own metrics series, ``<job>/metrics/series.jsonl``: one line per ``metrics_interval`` with the
round, sites by state, bytes over the server's links and every rank's system sample (what ``hpcflare dashboard``
charts; readable with any JSON-lines tool)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hpcflare.monitoring.metrics import HostView

SAMPLE_FIELDS = ("cpu_percent", "rss_bytes", "threads", "open_fds", "load1", "host_memory_used_bytes")


def series_record(view: HostView, cap: int) -> dict[str, Any]:
    states: dict[str, int] = {}
    for state in view.sites.values():
        states[state] = states.get(state, 0) + 1
    ranks = {}
    for rank in sorted(view.samples)[:cap]:
        role, sample = view.samples[rank]
        ranks[rank] = {"role": role, "host": sample.host, **{k: getattr(sample, k) for k in SAMPLE_FIELDS}}
        if sample.gpus:
            ranks[rank]["gpu_utilization"] = max(g.utilization for g in sample.gpus)
            ranks[rank]["gpu_memory_used_bytes"] = sum(g.memory_used_bytes for g in sample.gpus)
    return {
        "t": round(time.time(), 3),
        "round": view.round,
        "num_rounds": view.num_rounds,
        "phase": view.phase,
        "sites": states,
        "bytes_in": sum(n for (_, d), n in view.link_bytes.items() if d == "in"),
        "bytes_out": sum(n for (_, d), n in view.link_bytes.items() if d == "out"),
        "uploads_waiting": view.uploads_waiting,
        "ranks": ranks,
    }


def read_series(path: Path, limit: int = 5000) -> list[dict[str, Any]]:
    """The series' records (the last ``limit``); lines a killed writer left half-written are skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines()[-limit:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
