"""splitnn: split learning (SplitNN) on vertically partitioned rows. Sites hold different columns of the same
people; PSI aligns the rows, then every site trains the bottom of the network on its own columns and the label
owner (site-1) also the top, exchanging activations and gradients per batch through the server.

    python recipes/splitnn/job.py [--env local|sim|mpi|slurm] [--n-clients 2] [--rounds 5] [--batch-size 64]
                                  [--lr 0.3] [--hidden 8] [--rows 4000] [--psi-job DIR]

Runs two jobs: recipes/psi on the sites' IDs (unless --psi-job names one), then the split training; a round is
one pass over the rows, validated at the label owner. The result model holds every site's part
('<site>/bottom.*', 'site-1/top.*'). Without --data-path the sites hold column blocks of a synthetic table,
each with a random 90% of the people.
"""

import argparse
import sys
from pathlib import Path

from hpcflare.recipe import SplitNNRecipe, job_cli, vertical_cli

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # model.py beside this file


def site_widths(args: argparse.Namespace) -> dict[str, int]:
    """Each site's number of columns (its bottom's input width)."""
    from hpcflare.tabular.data import load_csv, vertical_site

    widths = {}
    for n in range(args.n_clients):
        site = f"site-{n + 1}"
        if args.data_path:
            label = args.label_column if n == 0 else None
            x = load_csv(args.data_path.replace("{site}", site), label, site, id_column=args.id_column)[0]
        else:
            x = vertical_site(n, args.n_clients, args.rows)[1]
        widths[site] = x.shape[1]
    return widths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=2, rounds=5)
    parser.add_argument("--psi-job", default=None, help="an earlier PSI job's directory (default: run one)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--hidden", type=int, default=8, help="units of each site's bottom (the cut layer)")
    parser.add_argument("--rows", type=int, default=4000, help="synthetic population size")
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with a header row; {site} = site name"
    )
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--label-column", default="label", help="in site-1's CSV")
    args = parser.parse_args()
    from model import initial_parts

    psi_job = vertical_cli.psi_job(args, HERE.parent / "psi" / "job.py")
    train_args = [
        *("--psi-job", str(psi_job), "--hidden", str(args.hidden), "--batch-size", str(args.batch_size)),
        *("--lr", str(args.lr), "--n-sites", str(args.n_clients), "--rows", str(args.rows)),
        *("--id-column", args.id_column, "--label-column", args.label_column),
        *(("--data-path", args.data_path) if args.data_path else ()),
    ]
    recipe = SplitNNRecipe(
        name="splitnn",
        model=initial_parts(site_widths(args), "site-1", args.hidden),
        label_owner="site-1",
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=train_args,
        extra_files=[HERE / "model.py"],
        key_metric="val_accuracy",
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = run.get_result()
    print(f"job {run.get_job_id()}: {run.get_status()['state']}; every site's part of the model in {result}")


if __name__ == "__main__":
    main()
