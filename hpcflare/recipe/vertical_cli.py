"""Command-line plumbing shared by the vertical recipes (recipes/xgboost-vertical, recipes/splitnn): the PSI
job that aligns the sites' rows first, run on the same sites and Env."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def psi_job(args: argparse.Namespace, psi_job_py: Path) -> Path:
    """The PSI job a vertical job reads its rows' order from: ``--psi-job``'s, a placeholder when only exporting
    (said on stderr), else one run now."""
    if args.psi_job is None and (args.export_only or args.dry_run):
        args.psi_job = str(Path(args.job_root).resolve() / "PSI_JOB_DIR")
        print(
            f"note: run recipes/psi first; this job reads each site's intersection from {args.psi_job}/sites/ "
            "(pass the PSI job's directory with --psi-job)",
            file=sys.stderr,
        )
    return Path(args.psi_job) if args.psi_job else run_psi(args, psi_job_py)


def run_psi(args: argparse.Namespace, psi_job_py: Path) -> Path:
    """The PSI job (``psi_job_py``: recipes/psi/job.py) on the same sites and env (under Slurm: a job of its
    own, waited for); its sites/<site>/psi_intersection.txt align the rows."""
    root = Path(args.job_root).resolve()
    before = set(root.glob("psi-*")) if root.exists() else set()
    cmd = [
        sys.executable,
        str(psi_job_py),
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
