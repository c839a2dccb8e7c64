"""xgboost-vertical: sites hold different columns of the same people; align rows with PSI, then train XGBoost
together on XGBoost's column-split collective (the label owner, site-1, is the only site with labels).

    python recipes/xgboost-vertical/job.py [--env local|sim|mpi|slurm] [--n-clients 3] [--boost-rounds 30]
                                           [--data-path 'data/{site}.csv' --id-column id --label-column label]

Runs two jobs: recipes/psi on the sites' ID columns, then the vertical training. The model's features are the
sites' columns in rank order (label owner first). Without --data-path the sites hold column blocks of a
synthetic table, each with a random 90% of the people.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import safetensors.numpy

from hpcflare.recipe import XGBVerticalRecipe, job_cli

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    job_cli.add_job_arguments(parser, n_clients=3, rounds=1)
    parser.add_argument("--boost-rounds", type=int, default=30)
    parser.add_argument(
        "--data-path", default=None, help="a CSV per site with an ID column; {site} = site name"
    )
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic population size")
    parser.add_argument(
        "--psi-job", default=None, help="reuse this PSI job's intersections instead of running PSI"
    )
    args = parser.parse_args()
    job_cli.refuse_rounds(parser, args, "vertical XGBoost boosts in one job round; set --boost-rounds")
    if args.psi_job is None and (args.export_only or args.dry_run):
        args.psi_job = str(Path(args.job_root).resolve() / "PSI_JOB_DIR")
        print(
            f"note: run recipes/psi first; this job reads each site's intersection from {args.psi_job}/sites/ "
            "(pass the PSI job's directory with --psi-job)",
            file=sys.stderr,
        )
    psi_job = args.psi_job or run_psi(args)
    train_args = [
        "--psi-job",
        str(psi_job),
        "--boost-rounds",
        str(args.boost_rounds),
        "--n-sites",
        str(args.n_clients),
        "--rows",
        str(args.rows),
        "--id-column",
        args.id_column,
        "--label-column",
        args.label_column,
    ]
    if args.data_path:
        train_args += ["--data-path", args.data_path]
    recipe = XGBVerticalRecipe(
        name="xgboost-vertical",
        label_owner="site-1",
        **job_cli.recipe_arguments(args),
        train_script=HERE / "client.py",
        train_args=train_args,
    )
    run = job_cli.execute(recipe, args)
    if run is None:
        return
    result = safetensors.numpy.load_file(str(run.get_result()))["model"]
    out = run.job_dir.models_dir / "xgboost_model.json"
    out.write_bytes(result.tobytes())
    trees = len(json.loads(out.read_bytes())["learner"]["gradient_booster"]["model"]["trees"])
    print(f"job {run.get_job_id()}: {run.get_status()['state']}; {trees} trees in {out}")


def run_psi(args: argparse.Namespace) -> Path:
    """The PSI job on the same sites and env (under Slurm: a job of its own, waited for); its
    sites/<site>/psi_intersection.txt align the rows."""
    root = Path(args.job_root).resolve()
    before = set(root.glob("psi-*")) if root.exists() else set()
    cmd = [
        sys.executable,
        str(HERE.parent / "psi" / "job.py"),
        "--env",
        args.env,
        "--n-clients",
        str(args.n_clients),
        "--job-root",
        str(root),
        "--ids-path",
        ids_files(args, root),
        "--profile",
        args.profile,
    ]
    if args.env == "slurm":  # the same allocation shape and account as the training job
        cmd += ["--nodes", str(args.nodes), "--time", args.time]
        cmd += [
            flag
            for name in ("partition", "account")
            if getattr(args, name)
            for flag in (f"--{name}", getattr(args, name))
        ]
    subprocess.run(cmd, check=True)
    (job,) = set(root.glob("psi-*")) - before
    return job


def ids_files(args: argparse.Namespace, root: Path) -> str:
    """One ID file per site (from its CSV's ID column, or the synthetic tables), for the PSI job."""
    from hpcflare.tabular.data import load_csv, vertical_site

    folder = root / "vertical-ids"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(args.n_clients):
        site = f"site-{n + 1}"
        if args.data_path:
            ids = load_csv(args.data_path.replace("{site}", site), None, site, id_column=args.id_column)[3]
        else:
            ids = vertical_site(n, args.n_clients, args.rows)[0]
        (folder / f"{site}.txt").write_text("".join(f"{i}\n" for i in ids))
    return str(folder / "{site}.txt")


if __name__ == "__main__":
    main()
