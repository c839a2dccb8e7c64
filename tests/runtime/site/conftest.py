"""A scripted parent for the site's link: a real gRPC server on loopback whose replies and faults each test sets.

The site modules (connection, tasks, result sender, track records) are driven directly against it, so each is
tested on its own, through the real transport, without a whole job around it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.job import JobDir
from hpcflare.rank_logger import RankLogger
from hpcflare.recipe import FedAvgRecipe
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.upload import read_upload
from hpcflare.runtime.site.connection import Connection
from hpcflare.runtime.site.hooks import SiteHooks
from hpcflare.settings import Settings
from hpcflare.transport.api import Peer, Rpc, ServerHandler, UploadHeader
from hpcflare.transport.grpc_server import GrpcServer

MODEL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}


class Parent(ServerHandler):
    """Registers anyone with a fresh token, answers GetTask from a queue, serves MODEL, keeps what it receives.
    ``fail[method]``: exceptions raised by the next calls of that method, one per call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls: list[tuple[Rpc, dict]] = []
        self.fail: dict[Rpc, list[BaseException]] = defaultdict(list)
        self.tasks: list[dict] = []
        self.model = GlobalModel(dict(MODEL), 1)
        self.uploads: list[tuple[UploadHeader, dict[str, np.ndarray]]] = []
        self.tracked: list[dict] = []
        self.registered = 0
        self.lock = threading.Lock()

    def _maybe_fail(self, method: Rpc) -> None:
        with self.lock:
            pending = self.fail.get(method)
            exc = pending.pop(0) if pending else None
        if exc is not None:
            raise exc

    def handle_unary(self, method: Rpc, request: dict, peer: Peer) -> dict:
        with self.lock:
            self.calls.append((method, request))
        self._maybe_fail(method)
        if method == Rpc.REGISTER:
            self.registered += 1
            return {"token": f"token-{self.registered}"}
        if method == Rpc.GET_TASK:
            with self.lock:
                return self.tasks.pop(0) if self.tasks else {"task": "wait"}
        if method == Rpc.TRACK:
            self.tracked.extend(request["records"])
        return {"phase": "running"} if method == Rpc.HEARTBEAT else {}

    def handle_download(self, request: dict, peer: Peer) -> Iterator[bytes]:
        self._maybe_fail(Rpc.DOWNLOAD)
        return self.model.frames(tuple(request.get("start") or (0, 0)), self.settings.chunk_size)

    def handle_upload(self, frames: Iterator[bytes], peer: Peer) -> dict:
        self._maybe_fail(Rpc.UPLOAD)
        header, _, params = read_upload(frames, self.settings, MODEL, lambda h: h)
        self.uploads.append((header, {k: np.array(v) for k, v in params.items()}))
        params.close()
        return {"accepted": True}

    def serve(self, port: int = 0) -> Parent:
        self.server = GrpcServer(self, self.settings, RankLogger(None, "parent", "server"), port=port).start()
        self.port = self.server.port
        return self

    def stop(self) -> None:
        self.server.stop(0)

    def restart(self, after: float) -> threading.Thread:
        """Go down now (callers see UNAVAILABLE), come back on the same port ``after`` seconds later."""
        self.stop()
        thread = threading.Thread(target=lambda: (time.sleep(after), self.serve(self.port)))
        thread.start()
        return thread

    def task(self, round_num: int = 1, **extra: Any) -> dict:
        return {
            "task": "train",
            "task_id": f"task-{round_num}",
            "round": round_num,
            "total_rounds": 3,
            "ref": self.model.ref,
            "manifest": [s.to_wire() for s in self.model.specs],
            "meta": {},
            **extra,
        }

    def called(self, method: Rpc) -> list[dict]:
        with self.lock:
            return [request for m, request in self.calls if m == method]


FAST = {
    "heartbeat_interval": 0.2,
    "server_lost_timeout": 3,
    "rpc_timeout": 5,
    "task_poll_timeout": 0.2,
    "tracking_flush_interval": 3600,
}


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., JobDir]:
    """job(**recipe_kwargs): an exported two-site job directory (nothing of it runs)."""

    def make(**kwargs: Any) -> JobDir:
        script = tmp_path / "src" / "client.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("print('never run here')\n")
        settings = {**FAST, **kwargs.pop("settings", {})}
        return FedAvgRecipe(
            name="site",
            model=dict(MODEL),
            min_clients=2,
            num_rounds=3,
            train_script=script,
            settings=settings,
            **kwargs,
        ).export(tmp_path / "jobs")

    return make


@pytest.fixture
def link(job: Callable[..., JobDir]) -> Iterator[Callable[..., tuple[Connection, Parent]]]:
    """link(**recipe_kwargs) -> (a site-1 Connection, not started, to a scripted Parent on loopback)."""
    opened: list[tuple[Connection, Parent]] = []

    def make(**kwargs: Any) -> tuple[Connection, Parent]:
        job_dir = job(**kwargs)
        config = job_dir.load_config()
        settings = config.load_settings()
        parent = Parent(settings).serve()
        log = RankLogger(job_dir.log_dir, "site-1", "client")
        connection = Connection(
            job_dir, config, settings, "site-1", log, None, SiteHooks(), address=f"127.0.0.1:{parent.port}"
        )
        opened.append((connection, parent))
        return connection, parent

    yield make
    for connection, parent in opened:
        connection.close()
        parent.stop()


def events(job_dir: JobDir, name: str) -> list[dict]:
    import json

    path = job_dir.log_dir / "site-1.jsonl"
    return (
        [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == name]
        if path.exists()
        else []
    )


__all__ = ["FAST", "MODEL", "Parent", "errors", "events"]
