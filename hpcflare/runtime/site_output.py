"""What virtual clients print: each site's stdout and stderr in ``logs/<site>.out`` (as a process per site gets in
local mode), and on the rank's own stream as whole lines prefixed ``[site]``, whatever route started the rank.

A client rank runs its sites' scripts as threads of one process, which share one ``sys.stdout``. While the rank
runs, :func:`routed` puts a :class:`SiteStreams` in place of ``sys.stdout`` and ``sys.stderr``: a write from a
site's thread goes to that site; a write from any other thread passes through unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

OPEN_FILES = 64
"""Per-site files a rank keeps open at once (a rank of 1,000 sites must not hold 1,000 descriptors)."""
PARTIAL_LINE_CHARS = 64 << 10
"""A line longer than this without a newline (a progress bar's carriage returns) is passed on in pieces."""

_current = threading.local()


def bind(site: str | None, log_dir: Path | None = None) -> None:
    """Say that the calling thread runs ``site``'s script, whose output file is ``log_dir/<site>.out`` (None: no
    site)."""
    _current.target = (site, log_dir) if site is not None and log_dir is not None else None


def current_site() -> tuple[str, Path] | None:
    return getattr(_current, "target", None)


class _Files:
    """logs/<site>.out, opened on demand and closed least recently used first."""

    def __init__(self) -> None:
        self.open: OrderedDict[Path, TextIO] = OrderedDict()
        self.lock = threading.Lock()

    def write(self, path: Path, text: str) -> None:
        with self.lock:
            f = self.open.pop(path, None)
            if f is None:
                f = open(path, "a", encoding="utf-8", errors="replace")
            self.open[path] = f
            f.write(text)
            f.flush()
            while len(self.open) > OPEN_FILES:
                self.open.popitem(last=False)[1].close()

    def close(self) -> None:
        with self.lock:
            for f in self.open.values():
                f.close()
            self.open.clear()


class SiteStreams:
    """A text stream standing in for ``sys.stdout`` or ``sys.stderr`` while a client rank hosts its sites."""

    def __init__(self, original: TextIO, files: _Files) -> None:
        self.original, self.files = original, files
        self._partial: dict[Path, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        target = current_site()
        if target is None:
            return self.original.write(text)
        site, log_dir = target
        path = log_dir / f"{site}.out"
        with self._lock:
            pending = self._partial.pop(path, "") + text
            *lines, rest = pending.split("\n")
            if len(rest) > PARTIAL_LINE_CHARS:
                lines.append(rest)
                rest = ""
            if rest:
                self._partial[path] = rest
        if lines:
            self.files.write(path, "".join(line + "\n" for line in lines))
            self._echo("".join(f"[{site}] {line.rstrip(chr(13))}\n" for line in lines))
        return len(text)

    def _echo(self, text: str) -> None:
        try:
            self.original.write(text)
            self.original.flush()
        except (ValueError, OSError):  # the rank's stream is closed (shutdown): the site's file has it
            pass

    def end(self, site: str, log_dir: Path) -> None:
        """``site``'s script ended: its unfinished last line is written out."""
        path = log_dir / f"{site}.out"
        with self._lock:
            rest = self._partial.pop(path, "")
        if rest:
            self.files.write(path, rest + "\n")
            self._echo(f"[{site}] {rest}\n")

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return False  # per-site files are no terminal: progress bars draw whole lines

    def fileno(self) -> int:
        return self.original.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, buffer, ...: the original stream's
        return getattr(self.original, name)


_ROUTER: list[SiteStreams] = []
_USERS = 0
_ROUTER_LOCK = threading.Lock()


@contextlib.contextmanager
def routed() -> Iterator[list[SiteStreams]]:
    """sys.stdout and sys.stderr routed by site while the block runs (nested and concurrent blocks share one
    router: SimEnv runs several client ranks in one process)."""
    global _USERS
    with _ROUTER_LOCK:
        if _USERS == 0:
            files = _Files()
            _ROUTER[:] = [SiteStreams(sys.stdout, files), SiteStreams(sys.stderr, files)]
            sys.stdout, sys.stderr = _ROUTER  # type: ignore[assignment]
        _USERS += 1
        streams = list(_ROUTER)
    try:
        yield streams
    finally:
        with _ROUTER_LOCK:
            _USERS -= 1
            if _USERS == 0:
                sys.stdout, sys.stderr = streams[0].original, streams[1].original
                streams[0].files.close()
