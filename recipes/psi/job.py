"""psi: private set intersection of string IDs across sites (Diffie-Hellman PSI on Curve25519).

    python recipes/psi/job.py [--env local|sim|mpi|slurm] [--n-clients 3] [--n-ids 10000] [--overlap 0.5]
                              [--ids-path 'ids/{site}.txt']

Each site ends with the IDs every site has, in <job>/sites/<site>/psi_intersection.txt; the server sees only
encrypted points and writes sizes to <job>/models/psi.json. Rounds: n_clients + 1 (set automatically).
"""

import argparse
import json
from pathlib import Path

from hpcflare.recipe import PSIRecipe, job_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=3, rounds=0)
    parser.add_argument(
        "--ids-path", default=None, help="one ID per line, a file per site; {site} = site name"
    )
    parser.add_argument("--n-ids", type=int, default=10_000, help="synthetic IDs per site")
    parser.add_argument("--overlap", type=float, default=0.5, help="synthetic: share of IDs all sites have")
    args = parser.parse_args()
    job_cli.refuse_rounds(parser, args, "PSI takes n_clients + 1 rounds, set automatically")
    args.num_rounds = args.n_clients + 1
    train_args = ["--n-ids", str(args.n_ids), "--overlap", str(args.overlap)]
    if args.ids_path:
        train_args += ["--ids-path", args.ids_path]
    recipe = PSIRecipe(
        name="psi", **job_cli.recipe_arguments(args), train_script=HERE / "client.py", train_args=train_args
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    run.get_result()
    summary = json.loads((run.job_dir.models_dir / "psi.json").read_text())
    print(
        f"job {run.get_job_id()}: {run.get_status()['state']}; intersection of {summary['intersection_size']} IDs "
        f"(list sizes {summary['list_sizes']}); each site's IDs are in {run.job_dir.root / 'sites'}/<site>/"
    )


if __name__ == "__main__":
    main()
