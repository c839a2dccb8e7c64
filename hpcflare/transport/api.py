"""Transport contract: what a server-side handler implements and what a client-side transport offers.

Every implementation (gRPC today; staging and relays later) is run against the same contract tests.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hpcflare import errors
from hpcflare.enums import NamedEnum
from hpcflare.transport.codec import TensorSpec, pack_meta, unpack_meta
from hpcflare.transport.shm import SharedModel


class Rpc(NamedEnum):
    """The service's methods, by their gRPC names. Unary ones carry a msgpack request and reply; Download streams
    a model's frames to the caller, Upload streams an :class:`UploadHeader` and tensors to the host."""

    REGISTER = "Register"
    HEARTBEAT = "Heartbeat"
    GET_TASK = "GetTask"
    GOODBYE = "Goodbye"
    TRACK = "Track"
    EXCHANGE = "Exchange"
    MAP_MODEL = "MapModel"
    DOWNLOAD = "Download"
    UPLOAD = "Upload"


UNARY_METHODS = tuple(m for m in Rpc if m not in (Rpc.DOWNLOAD, Rpc.UPLOAD))


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
    def from_reply(cls, reply: dict[str, Any]) -> Task:
        staged = reply.get("staged")
        return cls(
            str(reply["task"]),
            str(reply["task_id"]),
            int(reply["round"]),
            int(reply["total_rounds"]),
            str(reply["ref"]),
            [TensorSpec.from_wire(item) for item in reply.get("manifest", [])],
            dict(reply.get("meta") or {}),
            staged if isinstance(staged, dict) else None,
        )


class UpdateKind(NamedEnum):
    """What an upload's tensors are: a whole model, a difference to the round's model, or a relay's weighted
    partial sum over its children (the wire's ``params_type``)."""

    FULL = "FULL"
    DIFF = "DIFF"
    PARTIAL = "PARTIAL"


_SECTIONS = ("staged", "quant", "mapped", "swarm", "partial")


@dataclasses.dataclass
class UploadHeader:
    """The first frame of every upload (a site's result, a relay's partial or forwarded update, a swarm
    aggregator's report): who sends it, for which task, what kind of params follow, and at most one of the
    optional sections. Built by the sender, encoded by :meth:`to_wire`, checked once on arrival by
    :meth:`from_wire`; nothing else reads the raw dict."""

    site: str
    token: str
    task_id: str
    round: int
    params_type: UpdateKind
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    staged: dict[str, Any] | None = None
    """A result left on the shared filesystem: ``{file, nbytes, sha256}`` (no tensors follow)."""
    quant: dict[str, dict[str, Any]] | None = None
    """Quantized tensors: name -> ``{mode, block}`` (the quantize filter's map)."""
    mapped: dict[str, Any] | None = None
    """A same-host upload in a sealed memory file: ``{file, tensors}`` (no tensors follow)."""
    swarm: dict[str, Any] | None = None
    """A swarm aggregator's report: ``{accepted, rejected, ref, manifest}``."""
    partial: dict[str, Any] | None = None
    """A relay's partial sum: ``{sites, rejected, weights}`` (params_type PARTIAL)."""

    def __post_init__(self) -> None:
        self.params_type = UpdateKind(self.params_type)
        self.meta = {k: v for k, v in (self.meta or {}).items() if isinstance(k, str)}
        self.metrics = dict(self.metrics or {})

    def to_wire(self) -> dict[str, Any]:
        out = {
            "site": self.site,
            "token": self.token,
            "task_id": self.task_id,
            "round": self.round,
            "params_type": str(self.params_type),
            "meta": self.meta,
            "metrics": self.metrics,
        }
        out.update({name: getattr(self, name) for name in _SECTIONS if getattr(self, name) is not None})
        return out

    @classmethod
    def from_wire(cls, raw: Any) -> UploadHeader:
        """The header a peer sent, or MalformedMessageError naming the first field that is wrong."""
        if not isinstance(raw, dict):
            raise errors.MalformedMessageError("upload header must be a mapping")
        unknown = set(raw) - {
            "site",
            "token",
            "task_id",
            "round",
            "params_type",
            "meta",
            "metrics",
            *_SECTIONS,
        }
        if unknown:
            raise errors.MalformedMessageError(
                f"upload header has unknown field(s) {sorted(map(str, unknown))[:5]}"
            )
        for name in ("site", "token", "task_id"):
            if not isinstance(raw.get(name), str):
                raise errors.MalformedMessageError(
                    f"upload header: {name!r} must be a string, got {raw.get(name)!r:.40}"
                )
        if not isinstance(raw.get("round"), int) or isinstance(raw.get("round"), bool):
            raise errors.MalformedMessageError(
                f"upload header: 'round' must be an integer, got {raw.get('round')!r:.40}"
            )
        if raw.get("params_type") not in PARAMS_TYPES:
            raise errors.MalformedMessageError(
                f"params_type must be one of {PARAMS_TYPES}, got {raw.get('params_type')!r:.40}"
            )
        for name in ("meta", "metrics", *_SECTIONS):
            if raw.get(name) is not None and not isinstance(raw[name], dict):
                raise errors.MalformedMessageError(
                    f"upload header: {name!r} must be a mapping, got {raw[name]!r:.40}"
                )
        return cls(
            raw["site"],
            raw["token"],
            raw["task_id"],
            raw["round"],
            UpdateKind(raw["params_type"]),
            raw.get("meta") or {},
            raw.get("metrics") or {},
            **{name: raw.get(name) for name in _SECTIONS},
        )

    def copy(self) -> UploadHeader:
        """A deep copy, as the wire would make it (a receiver in this process owns its header)."""
        return UploadHeader.from_wire(unpack_meta(pack_meta(self.to_wire())))


PARAMS_TYPES = tuple(kind.value for kind in UpdateKind)


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
    def handle_unary(self, method: Rpc, request: dict[str, Any], peer: Peer) -> dict[str, Any]: ...

    @abc.abstractmethod
    def handle_download(self, request: dict[str, Any], peer: Peer) -> Iterator[bytes]:
        """Yield encoded frames of the requested model, starting at request['start'] = [tensor_index, offset]."""

    def vouches(self, site: str, token: str) -> bool:
        """Are (site, token), sent as call metadata before any frame, a live member's credentials? A stream
        that shows them is never counted as anonymous."""
        return False

    def on_saturated(self, seconds: float) -> None:
        """The transport had every worker busy for ``seconds``: calls waited or were refused meanwhile, so no
        member's silence in that time is its own."""

    @abc.abstractmethod
    def handle_upload(self, frames: Iterator[bytes], peer: Peer) -> dict[str, Any]:
        """Consume an upload (first frame: header with manifest; then data frames)."""


class LocalHandler(ServerHandler):
    """A handler that also serves callers in its own process (a client rank's virtual clients) without frames:
    the model as private copy-on-write mappings of one shared copy, results as the caller's own arrays, checked
    exactly like a streamed upload before anything is folded."""

    @abc.abstractmethod
    def handle_local_download(
        self, request: dict[str, Any], peer: Peer
    ) -> list[tuple[TensorSpec, memoryview]]:
        """(spec, writable blob private to the caller) per tensor of the requested model."""

    @abc.abstractmethod
    def handle_local_upload(
        self, header: UploadHeader, tensors: Iterable[tuple[str, Any]], peer: Peer
    ) -> dict[str, Any]:
        """Validate and take a result whose tensors are the caller's arrays; they are not kept after returning."""


class ClientTransport(abc.ABC):
    """What a client (or relay) uses to talk to its parent."""

    @abc.abstractmethod
    def call(self, method: Rpc, request: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    def download(
        self, request: dict[str, Any], manifest: list[TensorSpec]
    ) -> Iterator[tuple[TensorSpec, bytes]]:
        """Yield (spec, blob) for each tensor of a model, resuming after transient failures."""

    def shared_model(self, request: dict[str, Any], manifest: list[TensorSpec]) -> SharedModel | None:
        """The model as the parent's own memory file, mapped here (a parent on this host), else None: download."""
        return None

    @abc.abstractmethod
    def upload(self, header: UploadHeader, tensors: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        """Stream header + tensors (numpy arrays or torch tensors) to the parent; return its reply."""

    @abc.abstractmethod
    def close(self) -> None: ...
