"""Federation overhead: an admin's submit to a standing server with 3 local site agents, against the same job in
LocalEnv (every site a process of one user's job).

Routes: LocalEnv; the federation with the sites reaching the job's server rank through the standing server's
one port (job_routing: proxy, the default); and with the sites connecting to the rank's own port (ports).

Prints, per route: seconds from submit (LocalEnv: from execute) to round 1 starting, seconds per round, and the
whole job's wall time. The federation's extra start-up is the sites accepting the job (fetching and checking its
app), the standing server starting the job's server rank, and the agents starting their client ranks.

    python benchmarks/federation.py [--rounds 10] [--sites 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package, run as a script

from hpcflare.env import LocalEnv  # noqa: E402
from hpcflare.recipe import FedAvgRecipe  # noqa: E402
from tests.federation.conftest import SCRIPT, Federation  # noqa: E402

SIZE = [3]
"""The model's float32 values (--size)."""
SETTINGS: dict[str, object] = {}
"""The job's settings (--grpc-only: no shared memory, every byte over gRPC as between machines)."""


def events(log: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["event"], []).append(float(record["t"]))
    return out


def timings(log: Path, started: float, rounds: int) -> tuple[float, float, float]:
    seen = events(log)
    first, done = seen["round_started"][0], seen["round_completed"][-1]
    return first - started, (done - first) / rounds, done - started


def federation_run(
    root: Path, sites: list[str], rounds: int, routing: str = "proxy"
) -> tuple[float, float, float]:
    fed = Federation(root)
    fed.server_settings_yaml = {"job_routing": routing}
    try:
        fed.start_server()
        for site in sites:
            fed.start_agent(site)
        fed.wait_connected(sites)
        job = (
            fed.recipe(sites, rounds=rounds, size=SIZE[0], settings=SETTINGS).export(root / "admin-jobs").root
        )
        with fed.session("alice") as admin:
            started = time.time()
            job_id = admin.submit_job(job)
            admin.monitor_job(job_id, timeout=600)
        log = fed.server_dir / "ws" / "jobs" / job_id / "job" / "logs" / "server.jsonl"
        return timings(log, started, rounds)
    finally:
        fed.stop()


def local_run(root: Path, sites: list[str], rounds: int) -> tuple[float, float, float]:
    for site in sites:
        (root / site).mkdir(parents=True, exist_ok=True)
    (root / "offset.txt").write_text("2")
    recipe = FedAvgRecipe(
        name="local",
        model={"w": np.zeros(SIZE[0], dtype=np.float32)},
        clients=sites,
        min_clients=len(sites),
        num_rounds=rounds,
        train_script=SCRIPT,
        train_args=f"--data {root / 'offset.txt'}",
        settings_profile="dev",
        settings=SETTINGS,
    )
    started = time.time()
    run = recipe.execute(LocalEnv(job_root=root / "jobs"))
    run.get_result(timeout=600)
    return timings(run.job_dir.log_dir / "server.jsonl", started, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sites", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=3, help="float32 values in the model (3: hello-numpy's)")
    parser.add_argument(
        "--grpc-only", action="store_true", help="no same-host shared memory: every byte over gRPC"
    )
    args = parser.parse_args()
    SIZE[0] = args.size
    if args.grpc_only:
        SETTINGS["shared_memory"] = False
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.processor() or platform.machine()}), "
        f"python {platform.python_version()}; {args.sites} sites, {args.rounds} rounds, "
        f"{args.size * 4 / 1e6:g} MB model{', gRPC only' if args.grpc_only else ''}, best of {args.repeat}"
    )
    print("# " + " ".join(sys.argv))
    print(f"{'route':<34} {'to round 1 (s)':>15} {'per round (s)':>14} {'wall (s)':>9}")
    for name, fn in (
        ("LocalEnv (one job, one user)", local_run),
        ("standing server, one port (proxy)", federation_run),
        ("standing server, job ports", lambda *a: federation_run(*a, routing="ports")),
    ):
        rows = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="hpcflare-bench-") as tmp:
                rows.append(fn(Path(tmp), sites, args.rounds))
        best = min(rows, key=lambda r: r[2])
        spread = statistics.pstdev([r[2] for r in rows]) if len(rows) > 1 else 0.0
        print(f"{name:<34} {best[0]:>15.2f} {best[1]:>14.3f} {best[2]:>9.2f}  (wall sd {spread:.2f})")


if __name__ == "__main__":
    main()
