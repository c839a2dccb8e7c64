"""Broadcast benchmark: a large model to many clients through shared-filesystem staging vs gRPC streaming.

Each client receives the full model and answers with a tiny DIFF, so the numbers are the broadcast's.
Prints wall seconds, bytes the server sent over gRPC, peak PSS of the process tree (shared mmap pages
counted once) and the server's peak RSS.

    python benchmarks/staging_broadcast.py --clients 32 --model-mb 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fedavg_scale import measure, model_of  # noqa: E402

from hpcflare.recipe import FedAvgRecipe  # noqa: E402

CLIENT = """
import numpy as np
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    checksum = sum(float(v.ravel()[-1]) for v in model.params.values())  # touch every tensor
    flare.send(flare.FLModel(params={"bias": np.zeros(4, np.float32)}, params_type="DIFF",
                             metrics={"checksum": checksum}))
"""


def run_one(mode: str, clients: int, mb: float, root: Path) -> dict[str, object]:
    script = root / "client.py"
    script.write_text(textwrap.dedent(CLIENT))
    model = {**model_of(mb), "bias": np.zeros(4, np.float32)}
    recipe = FedAvgRecipe(
        name=f"bcast-{mode}",
        model=model,
        min_clients=clients,
        num_rounds=1,
        n_clients=clients,
        train_script=script,
        staging=(mode == "staging"),
        settings_profile="hpc-large",
        settings={"server_threads": max(64, 2 * clients + 16)},
    )
    run, row = measure(recipe, root, timeout=1800, per_rank=1)  # a process per site, as measured before
    log = run.job_dir.log_dir / "server.jsonl"
    sent = sum(
        e.get("bytes_sent", 0)
        for e in map(json.loads, log.read_text().splitlines())
        if e["event"] == "round_completed"
    )
    return {
        "mode": mode,
        "wall": row["wall_s"],
        "sent_mb": sent / 2**20,
        "tree_mb": row["tree_pss_mb"],
        "server_mb": row["server_peak_mb"],
        "state": row["state"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--model-mb", type=float, default=100.0)
    parser.add_argument("--modes", nargs="+", default=["staging", "grpc"], choices=["staging", "grpc"])
    args = parser.parse_args()
    print(f"broadcast of a {args.model_mb:g} MB model to {args.clients} clients (LocalEnv, 1 round)")
    print(
        f"{'mode':<8} {'wall s':>7} {'server sent MB':>15} {'tree peak PSS MB':>17} {'server peak MB':>15}  state"
    )
    for mode in args.modes:
        with tempfile.TemporaryDirectory(prefix="hpcflare-bcast-") as tmp:
            row = run_one(mode, args.clients, args.model_mb, Path(tmp))
        print(
            f"{row['mode']:<8} {row['wall']:>7.1f} {row['sent_mb']:>15.1f} {row['tree_mb']:>17.0f} "
            f"{row['server_mb']:>15.0f}  {row['state']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
