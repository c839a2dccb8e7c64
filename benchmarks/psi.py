"""PSI cost: wall time of the psi recipe (a real job: server + sites) for N sites x M IDs each, 50% shared.

    python benchmarks/psi.py [--sites 2 3] [--ids 100000] [--env sim|local]

Prints a table: sites, IDs per site, intersection, wall seconds, X25519 operations per site (N x M).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "psi" / "job.py"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--env", default="local")
    args = parser.parse_args()
    print(
        "| sites | IDs per site | intersection | wall s | X25519 ops per site | env |\n|---|---|---|---|---|---|"
    )
    for n in args.sites:
        with tempfile.TemporaryDirectory() as root:
            t0 = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    str(RECIPE),
                    "--env",
                    args.env,
                    "--n-clients",
                    str(n),
                    "--n-ids",
                    str(args.ids),
                    "--overlap",
                    "0.5",
                    "--job-root",
                    root,
                ],
                check=True,
                capture_output=True,
            )
            wall = time.monotonic() - t0
            (job,) = Path(root).glob("psi-*")
            size = json.loads((job / "models" / "psi.json").read_text())["intersection_size"]
        print(f"| {n} | {args.ids:,} | {size:,} | {wall:.1f} | {n * args.ids:,} | {args.env} |", flush=True)


if __name__ == "__main__":
    main()
