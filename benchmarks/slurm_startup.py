"""Slurm start-up benchmark: `hpcflare job submit` of an N-client FedAvg job, time to its first round.

For each configuration it submits a real sbatch job (hello-numpy's model, a trivial client) and reads the
server's structured log: seconds from `sbatch` to the Slurm job starting (queueing), from the job's start to
the server opening round 1 (every rank's Python start-up, TLS kits, registration), and the whole job.

    python benchmarks/slurm_startup.py --clients 32 128 --nodes 4 [--rounds 2] [--relays 0 4]
    python benchmarks/slurm_startup.py --clients 10000 --clients-per-rank 625 --relays 4 --nodes 4

With --clients-per-rank K each client rank runs K sites as virtual clients (ranks = 1 + relays + N/K); with
--clients-per-rank auto, `job submit` packs the sites into the ranks the partition's CPUs hold (its default)
and the K column shows what it chose; the last column lists each round's seconds.

Needs a Slurm cluster (the dev cluster: NUM_NODES=4 bash slurm/dev-cluster-up.sh). Many ranks per node on a
small machine need --overcommit, which this script passes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.job import FINAL_STATES, JobDir
from hpcflare.recipe import FedAvgRecipe

CLIENT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def first_event(job: JobDir, name: str) -> float | None:
    path = job.log_dir / "server.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        event = json.loads(line)
        if event.get("event") == name:
            return float(event["t"])
    return None


def batch_started(job: JobDir) -> float | None:
    """When Slurm started the job (scontrol's StartTime, 1 s resolution)."""
    job_id = (job.root / "slurm_job_id").read_text().strip()
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("StartTime="):
            try:
                return time.mktime(time.strptime(field.split("=", 1)[1], "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                return None
    return None


def round_seconds(job: JobDir) -> list[float]:
    path = job.log_dir / "server.jsonl"
    return [
        float(e["seconds"])
        for e in map(json.loads, path.read_text().splitlines() if path.exists() else [])
        if e.get("event") == "round_completed"
    ]


def run_one(
    root: Path, clients: int, nodes: int, rounds: int, relays: int, timeout: float, per_rank: int | str = 1
) -> dict[str, Any]:
    script = root / "client.py"
    script.write_text(CLIENT)
    recipe = FedAvgRecipe(
        name=f"startup-{clients}",
        initial_model=np.ones((3, 3), np.float32),
        min_clients=clients,
        n_clients=clients,
        num_rounds=rounds,
        relays=relays,
        train_script=script,
    )
    job = recipe.export(root / "jobs")
    t0 = time.time()
    # auto: what `job submit` does by default (sites packed into the ranks the partition's CPUs hold); a
    # number K: K sites per rank, with --overcommit so that any count of ranks fits the emulated nodes
    packing = ["--clients-per-rank", str(per_rank)] + (["--overcommit"] if per_rank != "auto" else [])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcflare.cli",
            "job",
            "submit",
            str(job.root),
            "--nodes",
            str(nodes),
            "--time",
            "00:20:00",
            *packing,
        ],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + timeout
    while job.read_status().get("state") not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise SystemExit(f"{clients} clients: job not finished after {timeout:g}s; see {job.log_dir}")
        time.sleep(0.5)
    status = job.read_status()
    started, first = batch_started(job), first_event(job, "round_started")
    done = first_event(job, "job_completed") or time.time()
    return {
        "state": status.get("state"),
        "queued_s": (started or t0) - t0,
        "start_to_round1_s": (first - started) if first and started else float("nan"),
        "sbatch_to_round1_s": (first - t0) if first else float("nan"),
        "total_s": done - t0,
        "rounds": round_seconds(job),
        "per_rank": job.load_config().clients_per_rank,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--relays", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--clients-per-rank",
        type=lambda v: v if v == "auto" else int(v),
        default=1,
        help="sites per client rank (virtual clients); auto: job submit's default, which packs "
        "sites into the ranks the partition's CPUs hold (no --overcommit)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--work-dir",
        default="bench-work",
        help="where job dirs go: a folder on the filesystem every node mounts (ignored by git)",
    )
    args = parser.parse_args()
    print(
        f"{'clients':>7} {'K':>4} {'nodes':>5} {'relays':>6} {'state':>9} {'queued s':>9} {'start->round1 s':>15} "
        f"{'sbatch->round1 s':>16} {'total s':>8}  round s"
    )
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # on the shared filesystem the nodes see; a rank still writing its log must not fail the cleanup
    with tempfile.TemporaryDirectory(dir=work, ignore_cleanup_errors=True) as tmp:
        for clients in args.clients:
            for relays in args.relays:
                root = Path(tmp) / f"c{clients}-r{relays}"
                root.mkdir()
                row = run_one(
                    root, clients, args.nodes, args.rounds, relays, args.timeout, args.clients_per_rank
                )
                print(
                    f"{clients:>7} {row['per_rank']!s:>4} {args.nodes:>5} {relays:>6} {row['state']:>9} "
                    f"{row['queued_s']:>9.1f} {row['start_to_round1_s']:>15.1f} {row['sbatch_to_round1_s']:>16.1f} "
                    f"{row['total_s']:>8.1f}  {' '.join(f'{s:.1f}' for s in row['rounds'])}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
