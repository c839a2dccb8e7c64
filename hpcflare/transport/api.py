"""Transport contract: what a server-side handler implements and what a client-side transport offers.

Every implementation (gRPC today; staging and relays later) is run against the same contract tests.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Iterable, Iterator

from hpcflare.transport.codec import TensorSpec
from hpcflare.transport.shm import SharedModel

UNARY_METHODS = ("Register", "Heartbeat", "GetTask", "Goodbye", "Track", "Exchange", "MapModel")


@dataclasses.dataclass
class Task:
    """One round's work for a site, as the parent's GetTask reply describes it."""

    name: str
    task_id: str
    round: int
    total_rounds: int
    ref: str
    manifest: list[TensorSpec]
    meta: dict[str, Any]
    staged: dict[str, Any] | None = None

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> "Task":
        staged = reply.get("staged")
        return cls(str(reply["task"]), str(reply["task_id"]), int(reply["round"]), int(reply["total_rounds"]),
                   str(reply["ref"]), [TensorSpec.from_wire(item) for item in reply.get("manifest", [])],
                   dict(reply.get("meta") or {}), staged if isinstance(staged, dict) else None)


def upload_header(site: str, token: str, task_id: str, round_num: int, params_type: str,
                  meta: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The first frame of every upload (a site's result, a relay's partial or forwarded update, a swarm
    aggregator's report): who sends it, for which task, what kind of params follow, plus extra sections."""
    return {"site": site, "token": token, "task_id": task_id, "round": round_num, "params_type": str(params_type),
            "meta": {k: v for k, v in (meta or {}).items() if isinstance(k, str)}, "metrics": dict(metrics or {}),
            **extra}


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is calling: its address, and on mutual-TLS channels the verified certificate name."""

    address: str
    identity: str | None = None
    cancel: Callable[[], Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    """Ends this call from the server side (a stream whose site was declared dead)."""

    def __str__(self) -> str:
        return self.address if self.identity is None else f"{self.identity}@{self.address}"


class ServerHandler(abc.ABC):
    """Server-side logic behind a transport; raise hpcflare errors, the transport maps them to status codes."""

    @abc.abstractmethod
    def handle_unary(self, method: str, request: dict, peer: Peer) -> dict: ...

    @abc.abstractmethod
    def handle_download(self, request: dict, peer: Peer) -> Iterator[bytes]:
        """Yield encoded frames of the requested model, starting at request['start'] = [tensor_index, offset]."""

    @abc.abstractmethod
    def handle_upload(self, frames: Iterator[bytes], peer: Peer) -> dict:
        """Consume an upload (first frame: header with manifest; then data frames)."""


class LocalHandler(ServerHandler):
    """A handler that also serves callers in its own process (a client rank's virtual clients) without frames:
    the model as private copy-on-write mappings of one shared copy, results as the caller's own arrays, checked
    exactly like a streamed upload before anything is folded."""

    @abc.abstractmethod
    def handle_local_download(self, request: dict, peer: Peer) -> list[tuple[TensorSpec, memoryview]]:
        """(spec, writable blob private to the caller) per tensor of the requested model."""

    @abc.abstractmethod
    def handle_local_upload(self, header: dict, tensors: Iterable[tuple[str, Any]], peer: Peer) -> dict:
        """Validate and take a result whose tensors are the caller's arrays; they are not kept after returning."""


class ClientTransport(abc.ABC):
    """What a client (or relay) uses to talk to its parent."""

    @abc.abstractmethod
    def call(self, method: str, request: dict, timeout: float) -> dict: ...

    @abc.abstractmethod
    def download(self, request: dict, manifest: list[TensorSpec]) -> Iterator[tuple[TensorSpec, bytes]]:
        """Yield (spec, blob) for each tensor of a model, resuming after transient failures."""

    def shared_model(self, request: dict, manifest: list[TensorSpec]) -> "SharedModel | None":
        """The model as the parent's own memory file, mapped here (a parent on this host), else None: download."""
        return None

    @abc.abstractmethod
    def upload(self, header: dict, tensors: Iterable[tuple[str, Any]]) -> dict:
        """Stream header + tensors (numpy arrays or torch tensors) to the parent; return its reply."""

    @abc.abstractmethod
    def close(self) -> None: ...
