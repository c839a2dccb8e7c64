"""Run one rank and leave its exit code in a file: ``python -m hpcflare.federation.rankwrap EXIT_FILE -- CMD...``.

A standing server or site agent starts its ranks through this wrapper in a session of their own, so the ranks
outlive a restart of the agent, and the agent (or its next life) learns how each ended from EXIT_FILE. SIGTERM
and SIGINT are passed on to the rank.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from hpcflare.fileio import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m hpcflare.federation.rankwrap EXIT_FILE -- CMD...", file=sys.stderr)
        return 2
    exit_file, command = Path(args[0]), args[2:]
    child = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    atomic_write_text(exit_file, str(code if code >= 0 else 128 - code))
    return 0


if __name__ == "__main__":
    sys.exit(main())
