"""Run a rank and leave its exit code in a file: ``python -m hpcflare.federation.rankwrap EXIT_FILE [--tasks N]
-- CMD...``.

A standing server or site agent starts its ranks through this wrapper in a session of their own, so the ranks
outlive a restart of the agent, and the agent (or its next life) learns how each ended from EXIT_FILE. SIGTERM
and SIGINT are passed on. ``--tasks N`` starts N copies of CMD, each with HPCFLARE_RANK (0..N-1) and
HPCFLARE_WORLD set, as srun would: an institution's relay and client ranks on one machine. EXIT_FILE then holds
the code of the first task that failed (its cause comes first), or 0 when all succeeded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcflare.fileio import atomic_write_text
from hpcflare.runtime.cluster.ranks import RANK_ENV, WORLD_ENV

USAGE = "usage: python -m hpcflare.federation.rankwrap EXIT_FILE [--tasks N] -- CMD..."


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tasks = 1
    if len(args) > 2 and args[1] == "--tasks":
        if not args[2].isdigit() or int(args[2]) < 1:
            print(USAGE, file=sys.stderr)
            return 2
        tasks = int(args[2])
        args = [args[0], *args[3:]]
    if len(args) < 3 or args[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    exit_file, command = Path(args[0]), args[2:]
    children = [  # a single task keeps the environment as it is
        subprocess.Popen(
            command, env=None if tasks == 1 else {**os.environ, RANK_ENV: str(i), WORLD_ENV: str(tasks)}
        )
        for i in range(tasks)
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    first_failure: int | None = None
    running = list(children)
    while running:
        for child in list(running):
            code = child.poll()
            if code is None:
                continue
            running.remove(child)
            if code != 0 and first_failure is None:
                first_failure = code if code >= 0 else 128 - code
        if running:
            time.sleep(0.1)
    atomic_write_text(exit_file, str(first_failure or 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
