"""fedstats: count, mean, stddev, min/max, histogram and quantiles of features spread over sites.

python recipes/fedstats/job.py [--env local|sim|mpi|slurm] [--n-clients 4] [--noise 0.01] [--min-count 10]
"""

import argparse
import json
from pathlib import Path

from hpcflare.recipe import FedStatsRecipe, job_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=4, rounds=2)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="Gaussian noise, as a fraction of each range"
    )
    parser.add_argument("--min-count", type=int, default=10)
    args = parser.parse_args()
    if args.num_rounds != 2:
        parser.error("fedstats always takes 2 rounds (counts and ranges, then histograms)")
    recipe = FedStatsRecipe(
        name="fedstats",
        train_script=HERE / "client.py",
        **job_cli.recipe_arguments(args),
        features=["age", "bmi", "length_of_stay"],
        bins=20,
        min_count=args.min_count,
        noise=args.noise,
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    run.get_result()
    found = run.job_dir.models_dir / "statistics.json"
    stats = json.loads(found.read_text())["statistics"]
    print(f"federated statistics of {len(stats)} features (all of them, with histograms: {found})")
    print(f"{'feature':<16} {'count':>7} {'mean':>8} {'stddev':>8} {'min':>8} {'median':>8} {'max':>8}")
    for name, s in stats.items():
        if "withheld" in s:
            print(f"{name:<16} withheld: {s['withheld']}")
            continue
        print(
            f"{name:<16} {s['count']:>7.0f} {s['mean']:>8.2f} {s['stddev']:>8.2f} {s['min']:>8.2f} "
            f"{s['quantiles']['0.5']:>8.2f} {s['max']:>8.2f}"
        )


if __name__ == "__main__":
    main()
