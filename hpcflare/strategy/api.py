"""Strategy contract: configure a round, then fold client updates into an aggregator as they arrive."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

Params = dict[str, np.ndarray]


@dataclasses.dataclass
class ClientUpdate:
    """One validated client result (params already checked against the global model's shapes, finite)."""

    site: str
    params: Params
    params_type: str  # "FULL" or "DIFF"
    weight: float
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class Aggregator(abc.ABC):
    """Consumes updates one at a time; must not keep references to them (memory O(model), not O(clients))."""

    decomposable: bool = False
    """True when partial results (e.g. a relay's weighted sums) can be merged: see partial()/add_partial()."""

    @abc.abstractmethod
    def add(self, update: ClientUpdate) -> None: ...

    def partial(self) -> tuple[Params, dict[str, float]]:
        """The state a relay sends up: per-tensor weighted sums and weight totals."""
        raise NotImplementedError(f"{type(self).__name__} cannot be decomposed; relays forward raw updates")

    def add_partial(self, sums: Params, weights: dict[str, float], count: int) -> None:
        """Merge another aggregator's partial() (from a relay)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be decomposed; relays forward raw updates")

    @abc.abstractmethod
    def result(self) -> Params:
        """The new global params; called once, after the round closed."""

    def result_items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Like result(), lazily: lets the caller encode and free tensor by tensor."""
        yield from self.result().items()

    @property
    @abc.abstractmethod
    def count(self) -> int: ...


class Strategy(abc.ABC):
    """An FL algorithm on the server: what to send each round and how to combine what comes back."""

    name: str = "strategy"

    def initial_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The round-1 global model from the job's initial model (SCAFFOLD adds its control variates)."""
        return params

    def state_dict(self) -> Params:
        """Server-side state that must survive a restart (optimizer moments...), saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore ``state_dict()`` after a resume."""

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        """Extra meta sent to clients with the round's task (default: nothing)."""
        return {}

    @abc.abstractmethod
    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator: ...
