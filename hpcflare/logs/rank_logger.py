"""One logger per rank: ``logs/<rank>.jsonl`` for machines, ``logs/<rank>.log`` for people.

Not built on the global ``logging`` tree on purpose: SimEnv runs several ranks in one process and each
must still get its own files.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


class RankLogger:
    def __init__(self, log_dir: Path | None, rank: str, role: str, echo: TextIO | None = None,
                 echo_level: str = "INFO") -> None:
        self.rank, self.role = rank, role
        self._lock = threading.Lock()
        self._echo, self._echo_level = echo, LEVELS[echo_level]
        self._json: TextIO | None = None
        self._human: TextIO | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._json = open(log_dir / f"{rank}.jsonl", "a", buffering=1, encoding="utf-8")
            self._human = open(log_dir / f"{rank}.log", "a", buffering=1, encoding="utf-8")

    def log(self, level: str, event: str, msg: str, **fields: Any) -> None:
        now = time.time()
        record = {"t": round(now, 6), "ts": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="milliseconds"),
                  "rank": self.rank, "role": self.role, "level": level, "event": event, "msg": msg}
        record.update(fields)
        stamp = _dt.datetime.fromtimestamp(now).strftime("%H:%M:%S.%f")[:-3]
        human = f"{stamp} {level:<7} {self.rank:<12} {msg}\n"
        with self._lock:
            if self._json is not None:
                self._json.write(json.dumps(record, default=str) + "\n")
            if self._human is not None:
                self._human.write(human)
            if self._echo is not None and LEVELS[level] >= self._echo_level:
                try:
                    self._echo.write(f"[{self.rank}] {msg}\n")
                    self._echo.flush()
                except ValueError:  # echo stream closed (interpreter shutdown)
                    pass

    def debug(self, event: str, msg: str, **fields: Any) -> None:
        self.log("DEBUG", event, msg, **fields)

    def info(self, event: str, msg: str, **fields: Any) -> None:
        self.log("INFO", event, msg, **fields)

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

