"""FedAvg scale benchmark: N clients, an M MB model, R rounds, in LocalEnv, SimEnv or MpiEnv.

Prints one row per configuration: wall seconds, peak RSS and PSS of the whole process tree (sampled every
0.1 s), the server's peak RSS, the server's CPU seconds per round (LocalEnv/MpiEnv: the server process;
SimEnv: the whole process) and the model traffic throughput: bytes the clients received and sent over the wall
time (job start and end included), and over the rounds' own time (server round_completed seconds).

    python benchmarks/fedavg_scale.py --clients 8 128 1000 --model-mb 1 --rounds 3 [--env local sim] \
        [--clients-per-rank auto 1] [--relays 0 4] [--profile auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from hpcflare.env import LocalEnv, MpiEnv, Run, SimEnv
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
        self.server_cpu = 0.0
        self.peaks: dict[int, int] = {}
        """Every process's peak RSS, by pid."""
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
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), full.rss)
                if proc.pid == self.server_pid:
                    self.peak_server = max(self.peak_server, full.rss)
                    try:
                        times = proc.cpu_times()
                        self.server_cpu = times.user + times.system
                    except psutil.Error:
                        pass
            self.peak_tree = max(self.peak_tree, total)
            self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def model_of(mb: float, tensors: int = 4) -> dict[str, np.ndarray]:
    n = max(1, int(mb * (1 << 20) / 4 / tensors))
    return {
        f"layer{i}.weight": np.random.default_rng(i).standard_normal(n).astype(np.float32)
        for i in range(tensors)
    }


def run_one(
    clients: int,
    model_mb: float,
    rounds: int,
    root: Path,
    profile: str,
    relays: int = 0,
    staging: bool = False,
    env: str = "local",
    per_rank: int | str = "auto",
) -> dict[str, float | str]:
    script = root / "client.py"
    script.write_text(textwrap.dedent(CLIENT))
    recipe = FedAvgRecipe(
        name=f"bench-{clients}x{model_mb}",
        model=model_of(model_mb),
        min_clients=clients,
        num_rounds=rounds,
        train_script=script,
        n_clients=clients,
        settings_profile=profile,
        relays=relays,
        staging=staging,
    )
    run, row = measure(recipe, root, env=env, per_rank=per_rank)
    traffic = 2 * clients * rounds * model_mb * (1 << 20) / 1e9
    log = run.job_dir.log_dir / "server.jsonl"
    in_rounds = (
        sum(
            e["seconds"]
            for e in map(json.loads, log.read_text().splitlines())
            if e.get("event") == "round_completed"
        )
        if log.exists()
        else 0.0
    )
    return {
        "clients": clients,
        "relays": relays,
        "staging": staging,
        "model_mb": model_mb,
        "rounds": rounds,
        "env": env,
        "gbps": traffic / float(row["wall_s"]),
        "round_gbps": traffic / in_rounds if in_rounds else float("nan"),
        **row,
        "server_cpu_per_round": float(row["server_cpu_s"]) / rounds,
    }


def measure(
    recipe: FedAvgRecipe,
    root: Path,
    timeout: float = 3600,
    env: str = "local",
    per_rank: int | str | None = None,
) -> tuple[Run, dict[str, float | str]]:
    """Run a recipe while sampling memory: (run, wall/memory/CPU/state figures)."""
    sampler = TreeSampler()
    sampler.start()
    t0 = time.monotonic()
    jobs = root / "jobs"
    runner = {
        "local": lambda: LocalEnv(job_root=jobs, verbose=False, clients_per_rank=per_rank),
        "sim": lambda: SimEnv(job_root=jobs, verbose=False, clients_per_rank=per_rank),
        "mpi": lambda: MpiEnv(job_root=jobs, clients_per_rank=per_rank),
    }[env]()
    cpu0 = psutil.Process().cpu_times()
    run = recipe.execute(runner)
    server = getattr(run, "server", None)
    sampler.server_pid = server.pid if server is not None else None
    try:
        run.get_result(timeout=timeout)
        state = "ok"
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
        state = f"FAILED: {exc}"[:80]
    wall = time.monotonic() - t0
    sampler.stop()
    if env == "sim":  # the server is a thread of this process: count the whole process
        cpu1 = psutil.Process().cpu_times()
        sampler.server_cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return run, {
        "k": run.job_dir.load_config().clients_per_rank,
        "wall_s": wall,
        "tree_peak_mb": sampler.peak_tree / 2**20,
        "tree_pss_mb": sampler.peak_pss / 2**20,
        "server_peak_mb": sampler.peak_server / 2**20,
        "server_cpu_s": sampler.server_cpu,
        "state": state,
    }


def _per_rank(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[8])
    parser.add_argument("--model-mb", type=float, nargs="+", default=[1.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile", default="auto", help="settings profile (auto: chosen from the client count)"
    )
    parser.add_argument("--env", nargs="+", choices=("local", "sim", "mpi"), default=["local"])
    parser.add_argument(
        "--clients-per-rank",
        type=_per_rank,
        nargs="+",
        default=["auto"],
        help="virtual clients per client rank: numbers or 'auto' (1 = a process/thread per site)",
    )
    parser.add_argument("--relays", type=int, nargs="+", default=[0], help="relay counts to compare")
    parser.add_argument(
        "--staging",
        choices=["off", "on", "both"],
        default="off",
        help="broadcast and collect through shared-filesystem staging (the job dir)",
    )
    args = parser.parse_args()
    print(
        f"{'env':>5} {'N':>5} {'K':>5} {'relays':>6} {'staging':>7} {'M (MB)':>7} {'R':>3} {'wall s':>8} "
        f"{'tree RSS MB':>12} {'tree PSS MB':>12} {'server MB':>10} {'srv CPU s/rnd':>13} {'GB/s':>6} {'rnd GB/s':>8}  state"
    )
    stagings = {"off": [False], "on": [True], "both": [False, True]}[args.staging]
    for env in args.env:
        for clients in args.clients:
            for per_rank in args.clients_per_rank:
                for mb in args.model_mb:
                    for relays in args.relays:
                        for staging in stagings:
                            with tempfile.TemporaryDirectory(prefix="hpcflare-bench-") as tmp:
                                row = run_one(
                                    clients,
                                    mb,
                                    args.rounds,
                                    Path(tmp),
                                    args.profile,
                                    relays,
                                    staging,
                                    env,
                                    per_rank,
                                )
                            print(
                                f"{env:>5} {clients:>5} {row['k']!s:>5} {relays:>6} {'on' if staging else 'off':>7} "
                                f"{mb:>7g} {args.rounds:>3} {row['wall_s']:>8.1f} {row['tree_peak_mb']:>12.0f} "
                                f"{row['tree_pss_mb']:>12.0f} {row['server_peak_mb']:>10.0f} "
                                f"{row['server_cpu_per_round']:>13.2f} {row['gbps']:>6.2f} {row['round_gbps']:>8.2f}  "
                                f"{row['state']}",
                                flush=True,
                            )


if __name__ == "__main__":
    main()
