"""Chaos benchmark: a 32-client FedAvg job in LocalEnv while random ranks are killed or stopped.

Faults, every ``--every`` seconds: SIGKILL a random client, or SIGSTOP one for a few seconds (longer than
heartbeat_timeout, so it is declared dead) and SIGCONT it, and once (``--kill-server``) SIGKILL the server,
after which the job is continued with ``Env.resume`` from its last checkpoint; with ``--flood N``, N idle
upload streams are held open on the server for the whole job (re-opened whenever refused or cut), as a hostile
or broken host would; with ``--relays R --relay-stall``, relay-1 is SIGSTOPped once for longer than
heartbeat_timeout (within server_lost_timeout) and SIGCONTed. Then the same job runs without faults. Prints rounds completed, completed rounds lost
(a checkpointed round that had to run again or is missing from the end result: must be 0) and the time
overhead against the fault-free run.

    python benchmarks/chaos.py --clients 32 --rounds 20 [--every 2] [--kill-server] [--flood 200]
                               [--relays 2 --relay-stall]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import safetensors.numpy

from hpcflare.env import LocalEnv
from hpcflare.env.local import LocalRun
from hpcflare.recipe import FedAvgRecipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.faults.test_flood import Flood  # noqa: E402 - the same flood as the fault test

CLIENT = """
import time
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    time.sleep(0.5)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""

SETTINGS = {
    "registration_timeout": 60,
    "round_timeout": 40,
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 3,
    "task_poll_timeout": 2,
    "server_lost_timeout": 6,
    "end_grace": 3,
    "rendezvous_timeout": 30,
    "stream_timeout": 30,
    "stream_idle_timeout": 15,
}


def _recipe(work: Path, clients: int, rounds: int, relays: int = 0) -> FedAvgRecipe:
    script = work / "client.py"
    work.mkdir(parents=True, exist_ok=True)
    script.write_text(textwrap.dedent(CLIENT))
    return FedAvgRecipe(
        name="chaos",
        model={"w": np.zeros(1024, np.float32)},
        n_clients=clients,
        min_clients=max(2, clients // 4),
        num_rounds=rounds,
        train_script=script,
        settings=SETTINGS,
        relays=relays,
    )


def _server_events(run: LocalRun) -> list[dict]:
    path = run.job_dir.log_dir / "server.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Chaos(threading.Thread):
    def __init__(
        self,
        run: LocalRun,
        sites: list[str],
        every: float,
        kill_server: bool,
        seed: int,
        relay_stall: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.run_, self.sites, self.every, self.kill_server = run, sites, every, kill_server
        self.relay_stall = relay_stall
        self.rng = random.Random(seed)
        self.faults: list[str] = []
        self.server_killed = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        spared = set(self.sites[: max(2, len(self.sites) // 4)])  # keep min_clients alive
        while not self.halt.wait(self.every):
            rounds = [e["round"] for e in _server_events(self.run_) if e["event"] == "round_completed"]
            if (
                self.kill_server
                and not self.server_killed.is_set()
                and len(rounds) >= 2
                and len(self.faults) >= 3
            ):
                os.kill(self.run_.server.pid, signal.SIGKILL)
                self.faults.append("SIGKILL server")
                self.server_killed.set()
                return
            if self.relay_stall and "relay-1" in self.run_.clients and len(self.faults) >= 1:
                relay = self.run_.clients["relay-1"]
                stall = (
                    SETTINGS["heartbeat_timeout"] + 2
                )  # past heartbeat_timeout, within server_lost_timeout
                os.kill(relay.pid, signal.SIGSTOP)
                time.sleep(stall)
                os.kill(relay.pid, signal.SIGCONT)
                self.faults.append(f"SIGSTOP+SIGCONT relay-1 ({stall}s)")
                self.relay_stall = False
                continue
            victims = [s for s in self.sites if s not in spared]
            if not victims:
                return
            site = self.rng.choice(victims)
            try:
                pid = self.run_.client_pid(site)
                if self.rng.random() < 0.5:
                    os.kill(pid, signal.SIGKILL)
                    self.faults.append(f"SIGKILL {site}")
                else:
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(SETTINGS["heartbeat_timeout"] + 1)
                    os.kill(pid, signal.SIGCONT)
                    self.faults.append(f"SIGSTOP+SIGCONT {site}")
            except (ProcessLookupError, TimeoutError, KeyError):
                continue
            spared.add(site)  # each site is hit at most once


def _server_address(run: LocalRun) -> str:
    path = run.job_dir.rendezvous_dir / "server.json"
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return str(json.loads(path.read_text())["address"])


def run_job(
    work: Path, clients: int, rounds: int, chaos: dict | None, flood: int = 0, relays: int = 0
) -> dict:
    env = LocalEnv(
        job_root=work / "jobs", verbose=False, clients_per_rank=1
    )  # chaos kills one site per process
    t0 = time.monotonic()
    run = _recipe(work, clients, rounds, relays).execute(env)
    monkey = None
    if chaos is not None:
        monkey = Chaos(run, [f"site-{i}" for i in range(1, clients + 1)], **chaos)
        monkey.start()
    flooding = Flood(_server_address(run), flood).__enter__() if flood else None
    run.wait(None)
    if flooding is not None:  # the first server's life (a resumed one listens elsewhere)
        flooding.__exit__()
        if monkey is not None:
            monkey.faults.append(f"{flooding.opened} idle upload streams")
    resumed = False
    if monkey is not None:
        monkey.halt.set()
        if monkey.server_killed.is_set():
            run = env.resume(run.job_dir)
            resumed = True
            run.wait(None)
    seconds = time.monotonic() - t0
    events = _server_events(run)
    completed = [e["round"] for e in events if e["event"] == "round_completed"]
    checkpointed = max((e["round"] for e in events if e["event"] == "resumed"), default=0)
    status = run.job_dir.read_status()
    # a completed round is lost if it was checkpointed and still ran again, or is missing from the result
    # (every round adds exactly 1 to every weight)
    lost = sum(1 for r in range(1, checkpointed + 1) if completed.count(r) > 1)
    if status.get("state") == "completed":
        result = safetensors.numpy.load_file(str(run.job_dir.result_model_path))["w"]
        lost += len(set(completed)) - int(round(float(result[0])))
    return {
        "state": status.get("state"),
        "rounds": len(set(completed)),
        "lost": lost,
        "seconds": seconds,
        "faults": monkey.faults if monkey else [],
        "resumed": resumed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between faults")
    parser.add_argument(
        "--kill-server", action="store_true", help="also SIGKILL the server once, then resume"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--flood",
        type=int,
        default=0,
        help="idle upload streams held open on the server during the chaos run",
    )
    parser.add_argument("--relays", type=int, default=0, help="relay ranks between the server and the sites")
    parser.add_argument(
        "--relay-stall", action="store_true", help="SIGSTOP relay-1 once past heartbeat_timeout"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcflare-chaos-") as tmp:
        calm = run_job(Path(tmp) / "calm", args.clients, args.rounds, None, relays=args.relays)
        wild = run_job(
            Path(tmp) / "chaos",
            args.clients,
            args.rounds,
            {
                "every": args.every,
                "kill_server": args.kill_server,
                "seed": args.seed,
                "relay_stall": args.relay_stall,
            },
            args.flood,
            args.relays,
        )
    print(f"{'run':<8} {'state':<10} {'rounds':>6} {'lost':>5} {'seconds':>8}  faults")
    for name, row in (("calm", calm), ("chaos", wild)):
        print(
            f"{name:<8} {row['state']:<10} {row['rounds']:>6} {row['lost']:>5} {row['seconds']:>8.1f}  "
            f"{len(row['faults'])}: {', '.join(row['faults'][:6])}{' ...' if len(row['faults']) > 6 else ''}"
            + (" (resumed)" if row["resumed"] else "")
        )
    print(f"time overhead of chaos: {wild['seconds'] / calm['seconds'] - 1:+.0%}")


if __name__ == "__main__":
    main()
