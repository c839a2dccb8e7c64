"""Append-only audit trail: one JSON line per admin action (on the standing server) and per site decision (on
each site agent): who, what, which job, when, and how it ended.

    {"time": 1764900000.1, "identity": "alice", "role": "lead", "action": "submit", "job": "cifar-...",
     "outcome": "ok", "detail": "..."}

Lines are written with O_APPEND and flushed to disk one by one; nothing ever rewrites the file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.listeners: list[Callable[[str, str], None]] = []
        """Called (action, outcome) after each record is durable (the standing server's metrics count them)."""

    def record(self, identity: str, action: str, job: str = "", outcome: str = "ok", **detail: Any) -> None:
        line = json.dumps(
            {
                "time": round(time.time(), 3),
                "identity": identity,
                "action": action,
                "job": job,
                "outcome": outcome,
                **{k: v for k, v in detail.items() if v not in (None, "")},
            },
            default=str,
        )
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        for listener in self.listeners:
            listener(action, outcome)

    def read(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []
