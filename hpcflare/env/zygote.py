"""Fork server for LocalEnv clients: import the runtime once, fork one process per client rank (a site, or
clients_per_rank sites as virtual clients).

Starting 128 Python processes that each import NumPy and gRPC costs ~0.25 CPU-seconds apiece; forking them
from one pre-imported parent costs milliseconds, and the imported pages stay shared (copy-on-write).
No gRPC object exists in this process before it forks, which is what gRPC requires of a forking parent.

    python -m hpcflare.env.zygote --job-dir D site-1 site-2 ...   (or client-rank-1 client-rank-2 ...)

Writes logs/client_pids.json once every site is forked and logs/client_exit_codes.json as each one ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from hpcflare.exitcodes import ExitCode
from hpcflare.fileio import atomic_write_text
from hpcflare.job import JobDir
from hpcflare.runtime import launch  # noqa: F401 - the point: import everything before forking


def _child(job_dir: JobDir, site: str, sites: list[str]) -> int:
    out = os.open(job_dir.log_dir / f"{site}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    if sites == [site]:  # a client rank's sites share the process: their names come from the Client API
        os.environ["HPCFLARE_SITE_NAME"] = site
    signal.signal(signal.SIGTERM, launch._raise_aborted)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return int(launch.run_unit(job_dir, site, sites))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcflare-zygote")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("sites", nargs="+")
    args = parser.parse_args(argv)
    job_dir = JobDir(args.job_dir)
    units = job_dir.load_config().client_units()
    pids: dict[int, str] = {}
    for site in args.sites:
        pid = os.fork()
        if pid == 0:
            code = ExitCode.INTERNAL_ERROR
            try:
                code = _child(job_dir, site, units.get(site, [site]))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(code))
        pids[pid] = site
    atomic_write_text(job_dir.log_dir / "client_pids.json", json.dumps({s: p for p, s in pids.items()}))

    def forward(signum: int, frame: object) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    codes: dict[str, int] = {}
    while len(codes) < len(pids):
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid in pids:
            codes[pids[pid]] = os.waitstatus_to_exitcode(status)
            atomic_write_text(job_dir.log_dir / "client_exit_codes.json", json.dumps(codes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
