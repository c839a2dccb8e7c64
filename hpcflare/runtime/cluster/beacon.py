"""Start-up beacons: a client rank's sign of life before its sites register.

A client rank touches ``<job>/rendezvous/starting/<rank>.json`` every ``heartbeat_interval`` from the moment its
process starts until it ends; the file names the sites it runs. The server watches these files while it waits
for registrations: a site whose rank's beacon keeps changing is alive and still starting (importing torch or
Lightning from a shared filesystem on a loaded node), so ``registration_timeout`` bounds only silence and
``startup_timeout`` bounds how long a live process may take to reach ``flare.init()``.

The server judges freshness by changes it observes itself (its own monotonic clock), never by comparing file
times with its own clock, so clock skew between nodes cannot make a beacon look alive or dead.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from hpcflare.fileio import atomic_write_json

STARTING_DIR = "starting"
"""Subdirectory of the job's rendezvous directory that holds the beacons."""


def beacon_dir(rendezvous_dir: Path) -> Path:
    return rendezvous_dir / STARTING_DIR


class StartupBeacon:
    """A client rank's beacon: written when started, touched every ``interval`` seconds until stopped."""

    def __init__(self, rendezvous_dir: Path, name: str, sites: list[str], interval: float) -> None:
        self.path = beacon_dir(rendezvous_dir) / f"{name}.json"
        self.name, self.sites, self.interval = name, list(sites), interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StartupBeacon:
        atomic_write_json(
            self.path,
            {"rank": self.name, "sites": self.sites, "host": socket.gethostname(), "pid": os.getpid()},
        )
        self._thread = threading.Thread(target=self._touch, name=f"beacon-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _touch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)
            except OSError:  # the job directory went away (the job is over): nothing left to signal
                return

    def stop(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StartupBeacon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BeaconWatch:
    """The server's view of the beacons: which sites belong to a rank whose beacon changed recently."""

    def __init__(self, rendezvous_dir: Path, fresh_for: float) -> None:
        self.directory = beacon_dir(rendezvous_dir)
        self.fresh_for = fresh_for
        # path -> (mtime_ns, when this watch saw it change, the sites it names)
        self._seen: dict[Path, tuple[int, float | None, list[str]]] = {}

    def alive(self) -> set[str]:
        """Sites of ranks whose beacon this watch saw change within ``fresh_for`` seconds."""
        now = time.monotonic()
        out: set[str] = set()
        for path in self.directory.glob("*.json") if self.directory.is_dir() else []:
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            last = self._seen.get(path)
            if last is None:  # first sight: a file left by a dead process looks the same, so not yet alive
                self._seen[path] = (mtime, None, self._sites(path))
                continue
            changed = now if mtime != last[0] else last[1]
            self._seen[path] = (mtime, changed, last[2])
            if changed is not None and now - changed <= self.fresh_for:
                out.update(last[2])
        return out

    @staticmethod
    def _sites(path: Path) -> list[str]:
        try:
            sites = json.loads(path.read_text()).get("sites")
        except (OSError, ValueError, AttributeError):
            return []
        return [s for s in sites if isinstance(s, str)] if isinstance(sites, list) else []


START_FAILED_DIR = "start_failed"
"""Subdirectory of the rendezvous directory where a site that failed before it could register says why."""
MAX_START_FAILURES = 1000
"""At most this many start failures are read back (the first ones name the cause)."""


def record_start_failure(rendezvous_dir: Path, site: str, reason: str, life: str) -> None:
    """A site that ends before registering leaves its cause here, so the server stops waiting for it at once
    (instead of at settings.registration_timeout) and names the site's own cause. ``life``: the job's
    incarnation, so a requeued job's server does not read an earlier life's failures."""
    try:
        atomic_write_json(
            rendezvous_dir / START_FAILED_DIR / f"{site}.json",
            {"site": site, "reason": reason[:1000], "life": life},
        )
    except OSError:
        pass  # no shared directory to write into: the server's registration timeout still bounds the wait


def clear_start_failures(rendezvous_dir: Path) -> None:
    """Env.resume forgets the start failures of an earlier life of the job (before any rank starts)."""
    for path in (rendezvous_dir / START_FAILED_DIR).glob("*.json"):
        path.unlink(missing_ok=True)


def start_failures(rendezvous_dir: Path, life: str) -> dict[str, str]:
    """Site -> why it failed before registering in this ``life`` of the job (see record_start_failure)."""
    out: dict[str, str] = {}
    try:
        paths = sorted((rendezvous_dir / START_FAILED_DIR).glob("*.json"))[:MAX_START_FAILURES]
    except OSError:
        return out
    for path in paths:
        try:
            entry = json.loads(path.read_text())
            if entry.get("life", "") == life:
                out[str(entry["site"])[:64]] = str(entry.get("reason", ""))[:1000]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
