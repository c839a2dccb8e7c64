"""One logger per rank: ``logs/<rank>.jsonl`` for machines, ``logs/<rank>.log`` for people.

Not built on the global ``logging`` tree on purpose: SimEnv runs several ranks in one process and each
must still get its own files.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


class Console:
    """A terminal shared by the ranks' echo and a progress bar: whole lines, one writer at a time, printed above
    the bar while one is shown (``above``, set by the bar)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.above: Any = None
        """Set while a progress bar is shown: prints one line above it."""
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                if self.above is not None:
                    self.above(line)
                else:
                    self.stream.write(line + "\n")
            if lines and self.above is None:
                self.stream.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()


_CONSOLES: dict[int, Console] = {}


def console(stream: Any = None) -> Console:
    """The one Console of ``stream`` (default: this process's stdout)."""
    stream = sys.stdout if stream is None else stream
    found = _CONSOLES.get(id(stream))
    if found is None or found.stream is not stream:  # an id can be reused once its stream is gone
        found = _CONSOLES[id(stream)] = Console(stream)
    return found


def plural(count: int, word: str, words: str = "") -> str:
    """'1 round', '3 rounds' (``words``: an irregular plural)."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def iso_utc(seconds: float | None = None) -> str:
    """An ISO 8601 UTC timestamp to the millisecond (now, or ``seconds`` since the epoch): what files people read
    carry (logs, status.json, metrics.csv)."""
    return _dt.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, _dt.timezone.utc
    ).isoformat(timespec="milliseconds")


class RankLogger:
    def __init__(
        self,
        log_dir: Path | None,
        rank: str,
        role: str,
        echo: TextIO | None = None,
        echo_level: str = "INFO",
        keep_open: bool = True,
    ) -> None:
        """``keep_open=False`` opens the files for each event: a process hosting hundreds of virtual clients
        would otherwise hold two descriptors per site (clusters often allow 1,024 per process)."""
        self.rank, self.role = rank, role
        self._lock = threading.Lock()
        self._echo, self._echo_level = echo, LEVELS[echo_level]
        self._json: TextIO | None = None
        self._human: TextIO | None = None
        self._paths: tuple[Path, Path] | None = None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with every event's record after it is written (the server's metrics count its events)."""
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            paths = (log_dir / f"{rank}.jsonl", log_dir / f"{rank}.log")
            if keep_open:
                self._json = open(paths[0], "a", buffering=1, encoding="utf-8")
                self._human = open(paths[1], "a", buffering=1, encoding="utf-8")
            else:
                self._paths = paths

    def log(self, level: str, event: str, msg: str, human: bool = True, **fields: Any) -> None:
        """One event: always a JSONL record; ``human=False`` leaves it out of the human log and the echo (a
        per-site event of a job with hundreds of sites: the human log gets a summary instead)."""
        now = time.time()
        record = {
            "t": round(now, 6),
            "ts": iso_utc(now),
            "rank": self.rank,
            "role": self.role,
            "level": level,
            "event": event,
            "msg": msg,
        }
        record.update(fields)
        stamp = _dt.datetime.fromtimestamp(now).strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp} {level:<7} {self.rank:<12} {msg}\n"
        with self._lock:
            if self._paths is not None:  # keep_open=False: one open-append-close per file
                with open(self._paths[0], "a", encoding="utf-8") as out:
                    out.write(json.dumps(record, default=str) + "\n")
                if human:
                    with open(self._paths[1], "a", encoding="utf-8") as out:
                        out.write(line)
            if self._json is not None:
                self._json.write(json.dumps(record, default=str) + "\n")
            if human and self._human is not None:
                self._human.write(line)
            if human and self._echo is not None and LEVELS[level] >= self._echo_level:
                try:
                    self._echo.write(f"[{self.rank}] {msg}\n")
                    self._echo.flush()
                except (ValueError, OSError):  # echo stream closed (shutdown) or its reader gone
                    self._echo = None
        for listener in self.listeners:
            listener(record)

    def debug(self, event: str, msg: str, **fields: Any) -> None:
        self.log("DEBUG", event, msg, **fields)

    def info(self, event: str, msg: str, **fields: Any) -> None:
        self.log("INFO", event, msg, **fields)

    def detail(self, event: str, msg: str, **fields: Any) -> None:
        """An INFO event for machines only (JSONL): per-site chatter of a many-site job."""
        self.log("INFO", event, msg, human=False, **fields)

    def warning(self, event: str, msg: str, **fields: Any) -> None:
        self.log("WARNING", event, msg, **fields)

    def error(self, event: str, msg: str, **fields: Any) -> None:
        self.log("ERROR", event, msg, **fields)

    def close(self) -> None:
        with self._lock:
            for f in (self._json, self._human):
                if f is not None:
                    f.close()
            self._json = self._human = None
            self._paths = None
