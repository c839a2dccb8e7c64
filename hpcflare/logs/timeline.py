"""``hpcflare logs timeline JOB_DIR -o timeline.png``: every rank's activity over time, from its JSON log.

One lane per rank (server, relays, then sites): a bar from registration to the rank's end, round spans
on the server lane, a site's training time per round (task received -> result sent) with its model pull
and result push as darker segments, and failures as red crosses with the event name. Where the job
stalled, which site was slow, and when a site died are visible at a glance.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.job import JobDir
from hpcflare.logs.diagnose import load_events

FAILURE_EVENTS = {
    "client_failed",
    "client_dead",
    "result_rejected",
    "tls_refused",
    "identity_refused",
    "transfer_stalled",
    "relay_lost",
    "script_stopped",
    "job_failed",
    "stragglers",
    "relay_failed",
    "late_result",
    "internal_error",
}
REGISTER_EVENTS = {"registered", "client_registered", "relay_registered", "relay_started", "server_started"}
MAX_LANES = 48
"""Beyond this many ranks, sites with nothing to report share one aggregate lane (the picture stays legible)."""


def natural(name: str) -> list[Any]:
    """site-2 before site-10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _lane_order(ranks: dict[str, list[dict[str, Any]]]) -> list[str]:
    def key(rank: str) -> tuple[int, list[Any]]:
        role = next((e.get("role") for e in ranks[rank] if e.get("role")), "client")
        return ({"server": 0, "relay": 1}.get(role, 2), natural(rank))

    return sorted((r for r in ranks if ranks[r]), key=key)


def _aggregate(lanes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the server, relays and every site with a failure or a straggler mark; fold the rest into one lane
    whose bars span, per round, from the first of them to start training to the last to finish."""
    if len(lanes) <= MAX_LANES:
        return lanes
    keep = [
        lane
        for lane in lanes
        if lane["rank"] == "server"
        or lane["rank"].startswith("relay")
        or lane["failures"]
        or lane["stragglers"]
    ]
    rest = [lane for lane in lanes if lane not in keep]
    if not rest:
        return keep
    per_round: dict[int, list[float]] = {}
    for lane in rest:
        for rnd, a, b in lane["train"]:
            span = per_round.setdefault(rnd, [a, b])
            span[0], span[1] = min(span[0], a), max(span[1], b)
    folded = {
        "rank": f"{len(rest)} other sites",
        "life": (min(x["life"][0] for x in rest), max(x["life"][1] for x in rest)),
        "rounds": [],
        "train": [(r, a, b) for r, (a, b) in sorted(per_round.items())],
        "transfers": [],
        "marks": [],
        "failures": [],
        "stragglers": [],
        "lives": [],
    }
    return keep + [folded]


def collect(job_dir: JobDir) -> dict[str, Any]:
    """The drawable spans and marks per rank (seconds since the first event), also used by tests."""
    ranks, _ = load_events(job_dir.log_dir)
    if not any(ranks.values()):
        raise ConfigError(f"no JSON logs in {job_dir.log_dir}; did the job start?")
    t0 = min(e["t"] for events in ranks.values() for e in events if "t" in e)
    server = [e for e in ranks.get("server", []) if "t" in e]
    lives = sorted(e["t"] - t0 for e in server if e.get("event") == "server_started")
    last_life = lives[-1] if lives else float("-inf")
    late: dict[
        str, list[tuple[float, Any]]
    ] = {}  # site -> (when, round) the server closed a round without it
    for e in server:
        if e.get("event") == "stragglers":
            for site in e.get("stragglers") or []:
                late.setdefault(site, []).append((e["t"] - t0, e.get("round")))
    lanes = []
    for rank in _lane_order(ranks):
        events = [e for e in ranks[rank] if "t" in e]
        lane: dict[str, Any] = {
            "rank": rank,
            "life": (events[0]["t"] - t0, events[-1]["t"] - t0),
            "rounds": [],
            "train": [],
            "transfers": [],
            "marks": [],
            "failures": [],
            "lives": [],
            "stragglers": late.get(rank, []),
        }
        open_round: dict[int, float] = {}
        task_at: dict[int, float] = {}
        for e in events:
            t, name, rnd = e["t"] - t0, e.get("event", ""), e.get("round")
            if name == "round_started" and isinstance(rnd, int):
                open_round[rnd] = t
            elif name == "round_completed" and rnd in open_round:
                lane["rounds"].append((rnd, open_round.pop(rnd), t))
            elif name == "task_received" and isinstance(rnd, int):
                task_at[rnd] = t
            elif name == "result_sent" and rnd in task_at:
                lane["train"].append((rnd, task_at.pop(rnd), t))
            if name in ("model_received", "result_sent") and isinstance(e.get("seconds"), (int, float)):
                lane["transfers"].append((t - float(e["seconds"]), t))
            if name in REGISTER_EVENTS:
                lane["marks"].append((t, name))
            if name in FAILURE_EVENTS - {"stragglers"} or str(e.get("level", "")).upper() == "ERROR":
                # what ended an earlier life (a requeue's SIGTERM) is drawn as that life's end, not a failure
                lane["lives" if t < last_life else "failures"].append((t, name))
        lanes.append(lane)
    lanes += _silent_lanes(job_dir, ranks, server, t0)
    try:
        config = job_dir.load_config()
        counts = {"ranks": 1 + config.relays + len(config.client_units()), "sites": len(config.clients)}
    except ConfigError:
        counts = {"ranks": len(lanes), "sites": len(lanes) - 1}
    return {"job_id": job_dir.root.name, "lanes": _aggregate(lanes), "lives": lives, **counts}


SERVER_VERDICTS = ("client_dead", "client_failed", "relay_lost", "client_rank_failed")


def _silent_lanes(
    job_dir: JobDir, ranks: dict[str, list[dict[str, Any]]], server: list[dict[str, Any]], t0: float
) -> list[dict[str, Any]]:
    """A lane for each site or rank that wrote no log of its own (killed before its first line, never
    started) but that the server declared dead, failed or left out: drawn from the server's word alone."""
    said: dict[str, tuple[float, str]] = {}
    for e in server:
        name = e.get("event")
        if name in SERVER_VERDICTS and e.get("site"):
            said.setdefault(str(e["site"]), (e["t"] - t0, str(name)))
        elif name == "clients_excluded":
            for site in e.get("missing") or []:
                said.setdefault(str(site), (e["t"] - t0, "excluded"))
    out = []
    for rank in sorted((r for r in said if not ranks.get(r)), key=natural):
        t, name = said[rank]
        out.append(
            {
                "rank": f"{rank} (no log)",
                "life": (t, t),
                "rounds": [],
                "train": [],
                "transfers": [],
                "marks": [],
                "failures": [(t, name)],
                "stragglers": [],
                "lives": [],
            }
        )
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def draw(job_dir: JobDir, output: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt

    data = collect(job_dir)
    lanes = data["lanes"]
    fig, ax = plt.subplots(figsize=(12, max(2.5, 0.35 * len(lanes) + 1.5)))
    for y, lane in enumerate(lanes):
        start, end = lane["life"]
        ax.broken_barh([(start, max(end - start, 1e-3))], (y - 0.35, 0.7), color="#e8e8e8")
        for rnd, a, b in lane["rounds"]:
            ax.broken_barh([(a, max(b - a, 1e-3))], (y - 0.3, 0.6), color="#9ecae1" if rnd % 2 else "#6baed6")
            ax.text(a, y, f"r{rnd}", va="center", fontsize=7)
        ax.broken_barh([(a, max(b - a, 1e-3)) for _, a, b in lane["train"]], (y - 0.25, 0.5), color="#a1d99b")
        ax.broken_barh(
            [(a, max(b - a, 1e-3)) for a, b in lane["transfers"]], (y - 0.25, 0.5), color="#31a354"
        )
        for t, _ in lane["marks"]:
            ax.plot(t, y, marker="|", color="black", markersize=10)
        for t, name in lane["failures"]:
            ax.plot(t, y, marker="x", color="red", markersize=8)
            ax.annotate(name, (t, y), xytext=(3, 6), textcoords="offset points", fontsize=6, color="red")
        for t, _ in lane["lives"]:
            ax.plot(t, y, marker="x", color="#999999", markersize=6)
        for t, rnd in lane["stragglers"]:
            ax.plot(t, y, marker=">", color="orange", markersize=7)
            ax.annotate(
                f"straggler r{rnd}",
                (t, y),
                xytext=(3, -9),
                textcoords="offset points",
                fontsize=6,
                color="darkorange",
            )
    for number, t in enumerate(data["lives"][1:], 2):  # a requeued job: each new life starts here
        ax.axvline(t, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"life {number}", (t, -0.5), xytext=(2, 0), textcoords="offset points", fontsize=7, color="gray"
        )
    ax.set_yticks(range(len(lanes)), [lane["rank"] for lane in lanes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first log event")
    ax.set_title(
        f"{data['job_id']} ({_plural(data['ranks'], 'rank')}, {_plural(data['sites'], 'site')}): rounds (blue), training (light green), transfers "
        "(green), registration (|), failures (x), stragglers (>), requeued lives (dashed)",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    output = Path(output)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
