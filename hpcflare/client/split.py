"""Split learning, site side (a SplitNN job: ``SplitNNRecipe``; the server side is hpcflare.strategy.splitnn).

In a training script, after ``model = flare.receive()``::

    link = split.link(model)  # this round's exchange
    if link.is_label_owner:
        acts = link.activations(batch)  # {site: array [batch, width]} of every other site
        ...  # top forward, loss, backward
        link.send_gradients(batch, {site: grad_of_acts})
    else:
        link.send_activations(batch, bottom_out)  # array [batch, width]
        grad = link.gradient(batch)  # dLoss/d(bottom_out)

Validation batches use ``phase="val"`` and have no gradients. Arrays are numpy (torch tensors are taken and,
on the way back, given as numpy: ``torch.from_numpy``). Every wait is bounded by the job's
``batch_timeout``; a site that is gone fails the wait with its name.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.client import api
from hpcflare.client.model import FLModel
from hpcflare.transport.api import Rpc


class SplitLink:
    """One site's per-batch exchange in one round of a SplitNN job."""

    def __init__(self, config: dict[str, Any], round_num: int, site: str, call: Any) -> None:
        self.label_owner: str = config["label_owner"]
        self.sites: list[str] = list(config["sites"])
        self.batch_timeout = float(config["batch_timeout"])
        self.round, self.site, self._call = round_num, site, call

    @property
    def is_label_owner(self) -> bool:
        return self.site == self.label_owner

    @property
    def others(self) -> list[str]:
        """The sites whose activations the label owner takes, in a fixed order."""
        return [s for s in self.sites if s != self.label_owner]

    def send_activations(self, batch: int, activations: Any, phase: str = "train") -> None:
        self._until("act", phase, batch, {"data": _encode(activations)}, f"room for batch {batch}")

    def gradient(self, batch: int) -> np.ndarray:
        reply = self._until(
            "grad", "train", batch, {}, f"the gradient of batch {batch} from {self.label_owner}"
        )
        return _decode(reply["grad"])

    def activations(self, batch: int, phase: str = "train") -> dict[str, np.ndarray]:
        reply = self._until("acts", phase, batch, {}, f"the activations of {phase} batch {batch}")
        return {site: _decode(raw) for site, raw in reply["acts"].items()}

    def send_gradients(self, batch: int, gradients: dict[str, Any]) -> None:
        data = {site: _encode(g) for site, g in gradients.items()}
        self._until("grads", "train", batch, {"data": data}, f"room for the gradients of batch {batch}")

    def _until(self, op: str, phase: str, batch: int, payload: dict[str, Any], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.batch_timeout
        request = {"op": op, "round": self.round, "phase": phase, "batch": batch, **payload}
        while True:
            reply = self._call(request)
            if reply.get("status") != "wait":
                return dict(reply)
            if time.monotonic() >= deadline:
                raise errors.RoundFailedError(
                    f"splitnn round {self.round}: {self.site} waited {self.batch_timeout:g}s for {what} "
                    "(splitnn batch_timeout)"
                )


def link(model: FLModel, ctx: Any = None) -> SplitLink:
    """This round's exchange, from the model ``flare.receive()`` returned."""
    config = (model.meta or {}).get("splitnn")
    if not isinstance(config, dict):
        raise errors.ConfigError(
            "split.link(model): this job is not a SplitNN job (no 'splitnn' in the task meta)"
        )
    state = api._ctx(ctx)
    connection = state.agent.connection
    timeout = connection.settings.rpc_timeout
    round_num = state.seen.round if state.seen is not None else -1

    def call(request: dict[str, Any]) -> dict[str, Any]:
        return connection.call(Rpc.EXCHANGE, request, timeout)

    return SplitLink(config, round_num, api.get_site_name(ctx=state), call)


def _encode(value: Any) -> dict[str, Any]:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.ascontiguousarray(value)
    if array.ndim != 2:
        raise errors.ConfigError(f"split learning sends 2-D arrays [batch, width], got shape {array.shape}")
    if array.dtype.name not in ("float32", "float16", "float64"):
        array = array.astype(np.float32)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}


def _decode(raw: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(raw["data"], raw["dtype"]).reshape(raw["shape"]).copy()
