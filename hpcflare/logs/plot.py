"""`hpcflare logs plot JOB -o metrics.png`: each training metric by round, a line per site plus the global one
(from ``tracking/metrics.csv``, which every job writes). Needs matplotlib (``hpcflare[plots]``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from hpcflare.errors import ConfigError
from hpcflare.job import JobDir

MAX_SITE_LINES = 30
"""Sites drawn per metric; with more, the global line and the sites' spread (min-max band) instead."""


def read_metrics(job_dir: JobDir, missing_ok: bool = False) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> site (and 'global') -> round -> value; non-numeric and non-finite values are left out."""
    path = job_dir.root / "tracking" / "metrics.csv"
    if not path.is_file():
        if missing_ok:
            return {}
        raise ConfigError(f"{path} not found: is {job_dir.root} a job folder whose server has started?")
    out: dict[str, dict[str, dict[int, float]]] = {}
    with open(path, newline="", errors="replace") as f:
        for row in csv.DictReader(f):
            try:
                number, value = int(row["round"]), float(row["value"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                out.setdefault(row["key"], {}).setdefault(row["site"], {})[number] = value
    return out


def draw(job_dir: JobDir, output: str | Path) -> Path:
    metrics = read_metrics(job_dir)
    if not metrics:
        raise ConfigError(
            f"{job_dir.root} has no round metrics yet: sites report them in FLModel.metrics with their results"
        )
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'hpcflare[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(metrics)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        sites = metrics[name]
        others = sorted(s for s in sites if s != "global")
        if len(others) <= MAX_SITE_LINES:
            for site in others:
                rounds = sorted(sites[site])
                ax.plot(rounds, [sites[site][r] for r in rounds], marker=".", linewidth=1, label=site)
        else:
            rounds = sorted({r for s in others for r in sites[s]})
            low = [min(sites[s][r] for s in others if r in sites[s]) for r in rounds]
            high = [max(sites[s][r] for s in others if r in sites[s]) for r in rounds]
            ax.fill_between(rounds, low, high, alpha=0.25, label=f"{len(others)} sites (min-max)")
        if "global" in sites:
            rounds = sorted(sites["global"])
            ax.plot(
                rounds, [sites["global"][r] for r in rounds], color="black", linewidth=2.5, label="global"
            )
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=max(1, min(4, (len(others) + 1) // 8 + 1)))
    fig.suptitle(job_dir.load_config().job_id)
    fig.tight_layout()
    out = Path(output)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
