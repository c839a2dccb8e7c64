"""Filter contract: transform what leaves a site (its update) before it goes on the wire.

Filters run in the site's process, in the order job.yaml lists them (``filters:``); each gets the update
as numpy arrays and may drop tensors, change values, or change their wire encoding. A quantizing filter
must come last; the server (or relay) dequantizes before anything is aggregated.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]


@dataclasses.dataclass
class Outgoing:
    """An update on its way out: params, their type (FULL/DIFF), and the header's quantization map."""

    params: Params
    params_type: str
    global_params: Params | None = None
    """The round's global model as received (for filters that work on the update, e.g. DP)."""
    quant: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


class Filter(abc.ABC):
    kind: str = "filter"
    needs_global: bool = False
    quantizes: bool = False

    @abc.abstractmethod
    def apply(self, out: Outgoing) -> Outgoing: ...


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    return np.asarray(value)
