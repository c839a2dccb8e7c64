"""The job's own metrics files, what ``hpcflare dashboard`` shows (readable with any JSON tool):

- ``<job>/metrics/series.jsonl``: one line per ``metrics_interval`` with the round, sites by state, bytes over
  the server's links and every rank's system sample (up to ``site_series_cap`` ranks);
- ``<job>/metrics/sites.json``: the latest per-site view (state, seconds since last heard of, bytes in and out),
  rewritten atomically each interval.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hpcflare.monitoring.metrics import HostView

TAIL_BLOCK = 64 << 10
"""Bytes read at a time from the end of the series file."""
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


def sites_record(view: HostView) -> dict[str, Any]:
    links: dict[str, list[int]] = {}
    for (link, direction), count in view.link_bytes.items():
        links.setdefault(link, [0, 0])[0 if direction == "in" else 1] += count
    sites = {}
    for site, state in view.sites.items():
        rank = view.rank_of.get(site, site)
        bytes_in, bytes_out = links.get(site) or links.get(rank) or [0, 0]
        sites[site] = {
            "state": state,
            "last_seen": round(view.last_seen[site], 1) if site in view.last_seen else None,
            "rank": rank,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
    return {"t": round(time.time(), 3), "sites": sites}


def job_files(view: HostView, cap: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A series line and the sites snapshot, from one view of the host."""
    return series_record(view, cap), sites_record(view)


def read_series(path: Path, limit: int = 5000) -> list[dict[str, Any]]:
    """The series' records (the last ``limit``, read from the file's end: it may hold a long job's); lines a
    killed writer left half-written are skipped."""
    try:
        f = open(path, "rb")
    except OSError:
        return []
    with f:
        start, blocks, newlines = f.seek(0, os.SEEK_END), [], 0
        while start > 0 and newlines <= limit:
            size = min(TAIL_BLOCK, start)
            start -= size
            f.seek(start)
            blocks.append(f.read(size))
            newlines += blocks[-1].count(b"\n")
    lines = b"".join(reversed(blocks)).decode(errors="replace").splitlines()
    out = []
    for line in lines[-limit:] if start == 0 else lines[1:][-limit:]:  # a cut first line is not a record
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
