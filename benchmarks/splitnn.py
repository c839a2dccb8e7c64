"""Split learning throughput: training batches per second of recipes/splitnn's model with 2 and 4 sites in
LocalEnv (one process per site, activations and gradients through the server's gRPC mailbox on loopback).

Each row is one job over the synthetic vertical table (rows aligned as a PSI job leaves them); batches per
second = training batches of a round / the round's wall time, over every round after the first (which also
loads the data), so it measures the per-batch exchange, not start-up.

    python benchmarks/splitnn.py [--sites 2 4] [--rounds 4] [--rows 20000] [--batch-size 64] [--hidden 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "splitnn"


def measure(sites: int, rounds: int, rows: int, batch_size: int, hidden: int, root: Path) -> dict:
    from hpcflare.env import LocalEnv
    from hpcflare.recipe import SplitNNRecipe
    from hpcflare.tabular.data import vertical_site

    spec = importlib.util.spec_from_file_location("splitnn_model", RECIPE / "model.py")
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    tables = [vertical_site(n, sites, rows) for n in range(sites)]
    common = sorted(set.intersection(*(set(t[0]) for t in tables)))
    psi = root / f"psi-{sites}"
    for n in range(sites):
        (psi / "sites" / f"site-{n + 1}").mkdir(parents=True)
        (psi / "sites" / f"site-{n + 1}" / "psi_intersection.txt").write_text("\n".join(common))
    recipe = SplitNNRecipe(
        name=f"splitnn-bench-{sites}",
        model=model.initial_parts(
            {f"site-{n + 1}": t[1].shape[1] for n, t in enumerate(tables)}, "site-1", hidden
        ),
        label_owner="site-1",
        n_clients=sites,
        min_clients=sites,
        num_rounds=rounds,
        train_script=RECIPE / "client.py",
        train_args=[
            *("--psi-job", str(psi), "--n-sites", str(sites), "--rows", str(rows)),
            *("--batch-size", str(batch_size), "--hidden", str(hidden)),
        ],
        extra_files=[RECIPE / "model.py"],
        clients_per_rank=1,
    )
    run = recipe.execute(LocalEnv(job_root=root / "jobs", verbose=False))
    run.get_result(timeout=3600)
    log = run.job_dir.log_dir / "server.jsonl"
    done = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "round_completed"]
    batches = math.ceil(int(len(common) * 0.8) / batch_size)
    seconds = sum(e["seconds"] for e in done[1:])
    return {
        "sites": sites,
        "rows": len(common),
        "batches": batches,
        "per_s": batches * (len(done) - 1) / seconds,
        "accuracy": done[-1]["metrics"]["site-1"]["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=8)
    args = parser.parse_args()
    if args.rounds < 2:
        sys.exit("--rounds must be >= 2 (the first round is not timed)")
    print(f"{'sites':>5} {'aligned rows':>12} {'batches/round':>13} {'batches/s':>10} {'val accuracy':>12}")
    with tempfile.TemporaryDirectory(prefix="splitnn-bench-") as tmp:
        for sites in args.sites:
            r = measure(sites, args.rounds, args.rows, args.batch_size, args.hidden, Path(tmp))
            print(
                f"{r['sites']:>5} {r['rows']:>12} {r['batches']:>13} {r['per_s']:>10.0f} {r['accuracy']:>12.3f}"
            )


if __name__ == "__main__":
    main()
