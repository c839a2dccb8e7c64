"""FedAvg scale benchmark in LocalEnv: N clients, an M MB model, R rounds.

Prints one row per configuration: wall seconds, peak RSS of the whole process tree (sampled every 0.1 s)
and of the server alone.

    python benchmarks/fedavg_scale.py --clients 8 32 --model-mb 1 --rounds 3 [--relays 0 4]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from hpcflare.env import LocalEnv, Run
from hpcflare.recipe import FedAvgRecipe

CLIENT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 0.01 for k, v in model.params.items()}))
"""


class TreeSampler(threading.Thread):
    """Samples summed RSS of this process and all descendants; also the server's own RSS."""

    def __init__(self, interval: float = 0.1) -> None:
        """Tracks the summed RSS (shared pages counted in every process) and the summed PSS (shared pages
        split among their sharers: the tree's real physical footprint) of the process tree."""
        super().__init__(daemon=True)
        self.interval, self.peak_tree, self.peak_pss, self.peak_server = interval, 0, 0, 0
        self.server_pid: int | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.wait(self.interval):
            total = pss = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    full = proc.memory_full_info()
                except psutil.Error:
                    continue
                total += full.rss
                pss += full.pss
                if proc.pid == self.server_pid:
                    self.peak_server = max(self.peak_server, full.rss)
            self.peak_tree = max(self.peak_tree, total)
            self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def model_of(mb: float, tensors: int = 4) -> dict[str, np.ndarray]:
    n = max(1, int(mb * (1 << 20) / 4 / tensors))
    return {f"layer{i}.weight": np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(tensors)}


def run_one(clients: int, model_mb: float, rounds: int, root: Path, profile: str,
            relays: int = 0, staging: bool = False) -> dict[str, float | str]:
    script = root / "client.py"
    script.write_text(textwrap.dedent(CLIENT))
    recipe = FedAvgRecipe(name=f"bench-{clients}x{model_mb}", model=model_of(model_mb), min_clients=clients,
                          num_rounds=rounds, train_script=script, n_clients=clients, settings_profile=profile,
                          relays=relays, staging=staging,
                          settings={"server_threads": max(64, 2 * clients + 16)})
    _, row = measure(recipe, root)
    return {"clients": clients, "relays": relays, "staging": staging, "model_mb": model_mb, "rounds": rounds, **row}


def measure(recipe: FedAvgRecipe, root: Path, timeout: float = 3600) -> tuple[Run, dict[str, float | str]]:
    """Run a recipe in LocalEnv while sampling memory: (run, wall/memory/state figures)."""
    sampler = TreeSampler()
    sampler.start()
    t0 = time.monotonic()
    run = recipe.execute(LocalEnv(job_root=root / "jobs", verbose=False))
    sampler.server_pid = run.server.pid  # type: ignore[attr-defined]
    try:
        run.get_result(timeout=timeout)
        state = "ok"
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
        state = f"FAILED: {exc}"[:80]
    wall = time.monotonic() - t0
    sampler.stop()
    return run, {"wall_s": wall, "tree_peak_mb": sampler.peak_tree / 2**20, "tree_pss_mb": sampler.peak_pss / 2**20,
                 "server_peak_mb": sampler.peak_server / 2**20, "state": state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[8])
    parser.add_argument("--model-mb", type=float, nargs="+", default=[1.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="hpc-large")
    parser.add_argument("--relays", type=int, nargs="+", default=[0], help="relay counts to compare")
    parser.add_argument("--staging", choices=["off", "on", "both"], default="off",
                        help="broadcast and collect through shared-filesystem staging (the job dir)")
    args = parser.parse_args()
    print(f"{'N':>5} {'relays':>6} {'staging':>7} {'M (MB)':>7} {'R':>3} {'wall s':>8} {'tree RSS MB':>12} "
          f"{'tree PSS MB':>12} {'server MB':>10}  state")
    stagings = {"off": [False], "on": [True], "both": [False, True]}[args.staging]
    for clients in args.clients:
        for mb in args.model_mb:
            for relays in args.relays:
                for staging in stagings:
                    with tempfile.TemporaryDirectory(prefix="hpcflare-bench-") as tmp:
                        row = run_one(clients, mb, args.rounds, Path(tmp), args.profile, relays, staging)
                    print(f"{row['clients']:>5} {row['relays']:>6} {'on' if staging else 'off':>7} {row['model_mb']:>7g} "
                          f"{row['rounds']:>3} {row['wall_s']:>8.1f} "
                          f"{row['tree_peak_mb']:>12.0f} {row['tree_pss_mb']:>12.0f} {row['server_peak_mb']:>10.0f}  "
                          f"{row['state']}", flush=True)


if __name__ == "__main__":
    main()
