"""Split learning (SplitNN) for vertically partitioned data: every site holds different columns of the same rows
(aligned first, e.g. by a PSI job); each trains the bottom of the network on its own columns, and the label owner
also trains the top. Per batch, sites send their bottoms' activations to the server, the label owner takes them
all, runs the top and the loss, and sends each site the gradient of its activations back.

The server only routes: a mailbox per round holds at most ``window`` batches of activations per site and the
gradients not yet taken, and every wait has a deadline (``batch_timeout``). A round is one pass over the rows
(its training batches, then the validation batches, whose activations need no gradient). At the end of a round
each site uploads its own part of the model: tensors named ``<site>/...``; the global model is all the parts
(the checkpoint and the result), and a site may replace only its own.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcflare.errors import (
    ConfigError,
    MalformedMessageError,
    RoundFailedError,
    StaleTaskError,
    UpdateRejectedError,
)
from hpcflare.strategy.api import Aggregator, ClientUpdate, Params, RoundPlan, ServerContext, Strategy

PHASES = ("train", "val")
WAIT_S = 1.0
"""Longest one exchange call is held on the server before it answers 'wait' (the site asks again at once)."""
DTYPES = ("float32", "float16", "float64")


@dataclasses.dataclass
class _Mailbox:
    number: int
    activations: dict[tuple[str, int], dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """(phase, batch) -> site -> encoded activations, until the label owner takes them."""
    gradients: dict[tuple[int, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    """(batch, site) -> encoded gradient, until the site takes it."""


def check_array(site: str, raw: Any, max_bytes: int) -> dict[str, Any]:
    """A site's encoded array ({dtype, shape, data}) checked before it is kept or passed on."""
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data"}:
        raise MalformedMessageError(f"{site}: an array is {{dtype, shape, data}}")
    dtype, shape, data = raw["dtype"], raw["shape"], raw["data"]
    if dtype not in DTYPES or not isinstance(data, bytes):
        raise MalformedMessageError(f"{site}: array dtype must be one of {DTYPES} with bytes data")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise MalformedMessageError(
            f"{site}: activations and gradients are 2-D [batch, width], got {shape!r:.40}"
        )
    if len(data) != shape[0] * shape[1] * np.dtype(dtype).itemsize or len(data) > max_bytes:
        raise MalformedMessageError(
            f"{site}: array of {len(data)} bytes does not match {dtype}{shape} or exceeds {max_bytes} bytes "
            "(use smaller batches or a narrower cut layer)"
        )
    if not np.isfinite(np.frombuffer(data, dtype)).all():
        raise UpdateRejectedError(f"{site}: activations or gradients hold NaN/Inf")
    return raw


class SplitNN(Strategy):
    """``label_owner``: the site with the labels and the top of the network; ``window``: activation batches a
    site may send ahead of the label owner; ``batch_timeout``: seconds any site waits for a batch's
    activations or gradients before the round fails naming who it waited for."""

    name = "splitnn"
    supports_relays = False  # the label owner needs each site's activations, not a sum

    def __init__(
        self,
        label_owner: str,
        window: int = 8,
        batch_timeout: float = 300.0,
        max_batch_bytes: int = 512 << 10,
    ) -> None:
        if not isinstance(label_owner, str) or not label_owner:
            raise ConfigError("splitnn needs label_owner= (the site that holds the labels and the top)")
        if not isinstance(window, int) or not 1 <= window <= 1024:
            raise ConfigError(f"splitnn window must be an integer in [1, 1024], got {window!r}")
        if not isinstance(batch_timeout, (int, float)) or not 0 < batch_timeout <= 86400:
            raise ConfigError(f"splitnn batch_timeout must be seconds in (0, 86400], got {batch_timeout!r}")
        if not isinstance(max_batch_bytes, int) or not 1024 <= max_batch_bytes <= 1 << 30:
            raise ConfigError("splitnn max_batch_bytes must be an integer in [1024, 2^30]")
        self.label_owner, self.window = label_owner, window
        self.batch_timeout, self.max_batch_bytes = float(batch_timeout), max_batch_bytes
        self._cv = threading.Condition()
        self._box: _Mailbox | None = None
        self._sites: list[str] = []
        self.context: ServerContext | None = None

    def start_services(self, context: ServerContext) -> None:
        self.context = context

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        if self.label_owner not in live:
            raise RoundFailedError(
                f"splitnn round {round_num}: the label owner {self.label_owner!r} is not among the live sites {live}"
            )
        with self._cv:
            self._box, self._sites = _Mailbox(round_num), sorted(live)
            self._cv.notify_all()
        return RoundPlan()

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        with self._cv:
            sites = list(self._sites)
        return {
            "splitnn": {
                "label_owner": self.label_owner,
                "sites": sites,
                "window": self.window,
                "batch_timeout": self.batch_timeout,
                "max_batch_bytes": self.max_batch_bytes,
            }
        }

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return _PartsAggregator(global_params)

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        with self._cv:
            self._box = None  # what was not taken goes with the round
            self._cv.notify_all()

    # ------------------------------------------------------------------ the per-batch exchange (server rank)
    def exchange(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        op, number, phase, batch = (request.get(k) for k in ("op", "round", "phase", "batch"))
        if phase not in PHASES or not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
            raise MalformedMessageError(f"{site}: splitnn {op!r:.20} needs phase in {PHASES} and batch >= 0")
        handler = {"act": self._act, "acts": self._acts, "grads": self._grads, "grad": self._grad}.get(op)  # type: ignore[arg-type]
        if handler is None:
            raise MalformedMessageError(f"{site}: unknown splitnn op {op!r:.20}")
        deadline = time.monotonic() + WAIT_S
        with self._cv:
            while True:
                box = self._box
                if box is None or number != box.number:
                    raise StaleTaskError(f"splitnn round {number!r:.10} is not open")
                if site not in self._sites:
                    raise UpdateRejectedError(f"{site} is not one of round {box.number}'s sites")
                reply = handler(box, site, phase, batch, request)
                if reply is not None:
                    self._cv.notify_all()
                    return dict(reply)
                self._gone(box, site)
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"status": "wait"}
                self._cv.wait(min(left, 0.25))

    def _gone(self, box: _Mailbox, site: str) -> None:
        """Fail the waiting call when a site it waits for is no longer alive."""
        live = self.context.live() if self.context is not None else set(self._sites)
        dead = [s for s in self._sites if s not in live and s != site]
        if dead:
            raise UpdateRejectedError(
                f"splitnn round {box.number}: {', '.join(dead)} {'is' if len(dead) == 1 else 'are'} gone "
                "(declared dead or ended); the round "
                "cannot go on without every site's columns"
            )

    def _act(self, box: _Mailbox, site: str, phase: str, batch: int, request: dict[str, Any]) -> Any:
        if site == self.label_owner:
            raise MalformedMessageError("the label owner keeps its own activations")
        held = sum(1 for mail in box.activations.values() if site in mail)
        if held >= self.window:
            return None  # wait for the label owner to take some (back pressure)
        mail = box.activations.setdefault((phase, batch), {})
        if site in mail:
            raise MalformedMessageError(f"{site}: activations of {phase} batch {batch} sent twice")
        mail[site] = check_array(site, request.get("data"), self.max_batch_bytes)
        return {"status": "ok"}

    def _acts(self, box: _Mailbox, site: str, phase: str, batch: int, request: dict[str, Any]) -> Any:
        if site != self.label_owner:
            raise MalformedMessageError(f"{site}: only the label owner takes activations")
        mail = box.activations.get((phase, batch), {})
        others = [s for s in self._sites if s != self.label_owner]
        if any(s not in mail for s in others):
            return None
        del box.activations[(phase, batch)]
        return {"status": "ok", "acts": {s: mail[s] for s in others}}

    def _grads(self, box: _Mailbox, site: str, phase: str, batch: int, request: dict[str, Any]) -> Any:
        if site != self.label_owner or phase != "train":
            raise MalformedMessageError(f"{site}: only the label owner sends gradients, of training batches")
        grads = request.get("data")
        others = [s for s in self._sites if s != self.label_owner]
        if not isinstance(grads, dict) or sorted(grads) != others:
            raise MalformedMessageError(f"gradients of batch {batch} must name every other site: {others}")
        for each, raw in grads.items():
            box.gradients[(batch, each)] = check_array(site, raw, self.max_batch_bytes)
        return {"status": "ok"}

    def _grad(self, box: _Mailbox, site: str, phase: str, batch: int, request: dict[str, Any]) -> Any:
        found = box.gradients.pop((batch, site), None)
        return None if found is None else {"status": "ok", "grad": found}


class _PartsAggregator(Aggregator):
    """The global model is every site's part (tensors named ``<site>/...``); a site's upload replaces its own."""

    def __init__(self, global_params: Mapping[str, np.ndarray]) -> None:
        self._params = dict(global_params)
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: ClientUpdate) -> None:
        foreign = [n for n in update.params if not n.startswith(f"{update.site}/")]
        if foreign:
            raise UpdateRejectedError(
                f"{update.site} may send only its own part of the model (tensors named '{update.site}/...'), "
                f"not {foreign[:3]}"
            )
        self._params.update(update.params)
        self._count += 1

    def result(self) -> Params:
        return self._params
