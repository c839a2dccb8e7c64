"""Per-round progress with an ETA while a job runs, on every route (it reads the job's status.json, which
the server writes on the shared filesystem whatever started it). Quiet when the stream is not a terminal."""

from __future__ import annotations

import sys
import threading
from typing import IO, Any

from tqdm import tqdm

from hpcflare.job import FINAL_STATES, JobDir, JobState
from hpcflare.rank_logger import console

POLL_S = 0.5
"""How often the bar re-reads status.json."""


def rounds_done(status: dict[str, Any]) -> int:
    """Completed rounds from a status.json: the server records the round it is in while running."""
    number = int(status.get("round") or 0)
    return number if status.get("state") == JobState.COMPLETED else max(0, number - 1)


class RoundProgress:
    def __init__(self, job_dir: JobDir, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.job_dir = job_dir
        stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(stream, "isatty", lambda: False)())
        total = job_dir.load_config().num_rounds
        self.bar = tqdm(
            total=total,
            desc=job_dir.root.name,
            unit="round",
            file=stream,
            disable=not enabled,
            dynamic_ncols=True,
            leave=True,
        )
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self) -> None:
        status = self.job_dir.read_status()
        done = min(rounds_done(status), int(self.bar.total or 0))
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(str(status.get("state", "")), refresh=True)

    def __enter__(self) -> RoundProgress:
        if not self.bar.disable:
            for out in (console(sys.stdout), console(sys.stderr)):  # echo lines print above the bar
                out.above = lambda line, stream=out.stream: tqdm.write(line, file=stream)
            self._thread = threading.Thread(target=self._run, name="round-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._halt.wait(POLL_S):
            self.update()
            if self.job_dir.read_status().get("state") in FINAL_STATES:
                return

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(2 * POLL_S)
        if not self.bar.disable:
            self.update()
        self.bar.close()
        for out in (console(sys.stdout), console(sys.stderr)):
            out.above = None
