"""What metrics cost a job: the same FedAvg job (128 clients x 1 MB model by default, LocalEnv) with metrics off,
on with the default settings.metrics_interval (15 s: every rank samples itself, the server serves Prometheus, which
scrapes it as often, rewrites a textfile and pushes StatsD to a local UDP socket), and on at 1 s (a stress case,
fifteen times the default rate).

Prints, per mode, the job's wall time and its server process's CPU seconds (best of --repeat, modes interleaved so
a machine's drift hits all), and each one's difference to "off".

    python benchmarks/metrics_overhead.py [--clients 128] [--mb 1] [--rounds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpcflare.env import LocalEnv  # noqa: E402
from hpcflare.recipe import FedAvgRecipe  # noqa: E402

SCRIPT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(root: Path, clients: int, mb: float, rounds: int, interval: float | None) -> tuple[float, float]:
    script = root / "client.py"
    script.write_text(SCRIPT)
    n = int(mb * (1 << 20) / 4)
    options: dict = {"settings": {"metrics_interval": 86400.0}}
    scraper = None
    if interval is not None:
        port, sink = free_port(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        options = {
            "settings": {"metrics_interval": interval},
            "metrics": {
                "prometheus_port": port,
                "prometheus_bind": "127.0.0.1",
                "textfile": str(root / "textfile" / "hpcflare.prom"),
                "statsd_address": f"127.0.0.1:{sink.getsockname()[1]}",
            },
        }

        def scrape() -> None:  # Prometheus' side: a scrape every interval
            while not done.is_set():
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                except OSError:
                    pass
                done.wait(interval)

        scraper = threading.Thread(target=scrape, daemon=True)
    recipe = FedAvgRecipe(
        name="metrics-bench",
        model={"w": np.zeros(n, np.float32)},
        min_clients=clients,
        n_clients=clients,
        num_rounds=rounds,
        train_script=script,
        **options,
    )
    done = threading.Event()
    started = time.monotonic()
    run = recipe.execute(LocalEnv(job_root=root / "jobs", verbose=False))
    server = psutil.Process(run.server.pid)
    cpu = [0.0]

    def watch() -> None:
        while not done.is_set():
            try:
                times = server.cpu_times()
                cpu[0] = times.user + times.system
            except psutil.Error:
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    if scraper is not None:
        scraper.start()
    run.get_result(timeout=1800)
    wall = time.monotonic() - started
    done.set()
    return wall, cpu[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB), python {platform.python_version()}; {args.clients} clients, "
        f"{args.mb:g} MB model, {args.rounds} rounds, best of {args.repeat}"
    )
    print("# " + " ".join(sys.argv))
    modes: dict[str, float | None] = {"off": None, "on (15 s)": 15.0, "on (1 s)": 1.0}
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode, interval in modes.items():
            with tempfile.TemporaryDirectory() as tmp:
                results[mode].append(run_once(Path(tmp), args.clients, args.mb, args.rounds, interval))
    best = {mode: (min(w for w, _ in rows), min(c for _, c in rows)) for mode, rows in results.items()}
    off = best["off"]
    print(f"{'metrics':<10} {'wall (s)':>9} {'server CPU (s)':>15} {'wall vs off':>12} {'CPU vs off':>11}")
    for mode, (wall, cpu) in best.items():
        print(
            f"{mode:<10} {wall:>9.2f} {cpu:>15.2f} {100 * (wall / off[0] - 1):>11.1f}% {100 * (cpu / off[1] - 1):>10.1f}%"
        )


if __name__ == "__main__":
    main()
