"""XGBoost's federated tracker (its gRPC server for histogram aggregation) in a child process of the server rank.

A child process, not a thread: xgboost's tracker blocks in C++ at shutdown until its own timeout, and a crash
there must not take the server rank down. The child prints its port as one JSON line, then lives until its
stdin closes (the server rank ended the round, or died: the pipe closes either way), so it is never orphaned.

    python -m hpcflare.tabular.xgb_tracker --world-size N [--timeout S] [--tls-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from hpcflare.errors import ConfigError, HpcflareError

TLS_FILES = ("tracker-key.pem", "tracker-cert.pem", "clients-ca.pem")
"""What --tls-dir holds: the tracker's key and certificate, and the CA that signed the sites' certificates."""


class TrackerError(HpcflareError):
    """XGBoost's federated tracker could not be started (the message says why and what to install or set)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--tls-dir", default=None)
    args = parser.parse_args(argv)
    from xgboost.federated import FederatedTracker

    tls = {}
    if args.tls_dir:
        key, cert, ca = (str(Path(args.tls_dir) / name) for name in TLS_FILES)
        tls = {"server_key_path": key, "server_cert_path": cert, "client_cert_path": ca}
    tracker = FederatedTracker(
        n_workers=args.world_size, port=0, secure=bool(tls), timeout=args.timeout, **tls
    )
    tracker.start()
    print(json.dumps({"port": int(tracker.worker_args()["dmlc_tracker_port"])}), flush=True)
    while sys.stdin.buffer.read(1):
        pass
    os._exit(0)  # skip the tracker's destructor: it waits for workers that already left


class TrackerProcess:
    """Start the tracker for ``world_size`` sites; ``port`` once it listens; ``stop()`` ends it."""

    def __init__(
        self, world_size: int, timeout: int, start_timeout: float, tls_dir: Path | None = None
    ) -> None:
        if importlib.util.find_spec("xgboost") is None:  # fail here, with the fix, not in the child
            raise ConfigError(
                "this job's strategy runs XGBoost's federated tracker on the server rank, but xgboost "
                "is not installed there: pip install 'hpcflare[tabular]'"
            )
        cmd = [
            sys.executable,
            "-m",
            "hpcflare.tabular.xgb_tracker",
            "--world-size",
            str(world_size),
            "--timeout",
            str(int(timeout)),
        ] + (["--tls-dir", str(tls_dir)] if tls_dir else [])
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.port = self._read_port(start_timeout)

    def _read_port(self, start_timeout: float) -> int:
        deadline = time.monotonic() + start_timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return int(json.loads(line)["port"])
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-1500:] if self.proc.stderr else ""
                raise TrackerError(
                    f"XGBoost's federated tracker exited with code {self.proc.returncode} before "
                    f"listening: {err.strip() or 'no output'} (xgboost from PyPI includes it; the "
                    "xgboost-cpu wheel does not)"
                )
        self.stop()
        raise TrackerError(
            f"XGBoost's federated tracker did not start within tracker_start_timeout="
            f"{start_timeout:g}s; raise it in the strategy's arguments on a slow node"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    sys.exit(main())
