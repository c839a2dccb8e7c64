"""``hpcflare`` command line: run recipes, inspect jobs and settings."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hpcflare.exitcodes import HELP, ExitCode
from hpcflare.job import JobDir
from hpcflare.settings import CONFIGS_DIR, Settings


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    target = Path(args.recipe)
    job_py = target / "job.py" if target.is_dir() else target
    if not job_py.is_file():
        print(f"hpcflare run: no job.py in {target}; pass a recipe folder such as recipes/hello-numpy", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(job_py), *extra])


def _status(args: argparse.Namespace, extra: list[str]) -> int:
    job_dir = JobDir(args.job_dir)
    if not job_dir.config_path.is_file():
        print(f"hpcflare status: {job_dir.root} is not a job directory (no job.yaml)", file=sys.stderr)
        return 2
    print(json.dumps(job_dir.read_status(), indent=2))
    return 0


def _settings(args: argparse.Namespace, extra: list[str]) -> int:
    settings = Settings.load(args.profile)
    docs = Settings.field_docs()
    print(f"profile {args.profile} ({CONFIGS_DIR})")
    for key, value in settings.as_dict().items():
        print(f"  {key:<24} {value!s:<14} {docs.get(key, '')}")
    return 0


def _exit_codes(args: argparse.Namespace, extra: list[str]) -> int:
    for code in ExitCode:
        print(f"{int(code):>4}  {code.name:<22} {HELP[code]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcflare", description="Federated learning runtime for HPC clusters.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a recipe folder's job.py (extra args are passed through)")
    p.add_argument("recipe")
    p.set_defaults(func=_run)
    p = sub.add_parser("status", help="print a job directory's status.json")
    p.add_argument("job_dir")
    p.set_defaults(func=_status)
    p = sub.add_parser("settings", help="show a settings profile with every deadline documented")
    p.add_argument("--profile", default="dev")
    p.set_defaults(func=_settings)
    p = sub.add_parser("exit-codes", help="list every rank exit code with its help text")
    p.set_defaults(func=_exit_codes)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args, extra))


if __name__ == "__main__":
    sys.exit(main())
