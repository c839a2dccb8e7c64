"""Private aggregation's cost: plain FedAvg vs secure aggregation (masking) vs HE (CKKS), side by side.

For each client count and model size, one real job per mode (LocalEnv, virtual clients per rank as chosen
by default), printing wall seconds, bytes on the wire (model downloads + uploads, from the ranks' logs) and
the server's peak RSS.

    python benchmarks/private_aggregation.py [--clients 8 64] [--model-mb 1 10] [--rounds 2] [--modes plain secagg he] [--relays 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
from pathlib import Path

from fedavg_scale import measure, model_of

from hpcflare.recipe import FedAvgRecipe

CLIENT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 0.01 for k, v in model.params.items()}))
"""
PRIVACY = {"plain": {}, "secagg": {"type": "secagg"}, "he": {"type": "he"}}


def wire_bytes(job: Path) -> tuple[int, int]:
    """(bytes the server/relays served, bytes the sites uploaded), from the JSONL logs."""
    down = up = 0
    for path in (job / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "round_completed" and path.stem == "server":
                down += int(event.get("bytes_sent") or 0)
            elif event.get("event") == "result_sent":
                up += int(event.get("bytes") or 0)
    return down, up


def run_one(mode: str, clients: int, mb: float, rounds: int, root: Path, relays: int = 0) -> dict:
    script = root / "client.py"
    script.write_text(textwrap.dedent(CLIENT))
    recipe = FedAvgRecipe(
        name=f"private-{mode}",
        model=model_of(mb),
        min_clients=clients,
        num_rounds=rounds,
        train_script=script,
        n_clients=clients,
        relays=relays,
        settings={"round_timeout": 3600, "max_model_bytes": 1 << 36, "stream_timeout": 3600},
        **({"privacy": PRIVACY[mode]} if PRIVACY[mode] else {}),
    )
    run, row = measure(recipe, root / mode, env="local", per_rank="auto")
    down, up = wire_bytes(run.job_dir.root)
    return {
        "mode": mode,
        "clients": clients,
        "relays": relays,
        "model_mb": mb,
        **row,
        "down_mb": down / 1e6,
        "up_mb": up / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--model-mb", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=list(PRIVACY), default=list(PRIVACY))
    parser.add_argument(
        "--relays", type=int, default=0, help="relay ranks (they add masked sums / ciphertexts)"
    )
    args = parser.parse_args()
    header = f"{'mode':>7} {'clients':>7} {'model MB':>8} {'wall s':>8} {'down MB':>9} {'up MB':>9} {'server MB':>9} state"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="hpcflare-private-") as tmp:
        for clients in args.clients:
            for mb in args.model_mb:
                for mode in args.modes:
                    root = Path(tmp) / f"{clients}-{mb}"
                    root.mkdir(exist_ok=True)
                    r = run_one(mode, clients, mb, args.rounds, root, args.relays)
                    print(
                        f"{r['mode']:>7} {r['clients']:>7} {r['model_mb']:>8g} {r['wall_s']:>8.1f} {r['down_mb']:>9.1f} "
                        f"{r['up_mb']:>9.1f} {r['server_peak_mb']:>9.0f} {r['state']}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
