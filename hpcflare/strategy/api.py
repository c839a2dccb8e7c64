"""Strategy contract: configure a round, then fold client updates into an aggregator as they arrive."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from hpcflare.enums import NamedEnum
from hpcflare.errors import MalformedMessageError
from hpcflare.transport.api import UpdateKind as UpdateKind  # re-exported: strategies name it here

Params = dict[str, np.ndarray]


class TaskKind(NamedEnum):
    """The task a round hands out: what flare.is_train() / is_evaluate() / is_submit_model() report."""

    TRAIN = "train"
    VALIDATE = "validate"
    SUBMIT_MODEL = "submit_model"
    STATISTICS = "statistics"


@dataclasses.dataclass
class ClientUpdate:
    """One validated client result (params already checked against the global model's shapes, finite)."""

    site: str
    params: Params
    params_type: UpdateKind  # FULL or DIFF
    weight: float
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RoundPlan:
    """What a round asks of whom: the task name the Client API sees (flare.is_train() / is_evaluate() /
    is_submit_model()), the sites that get it (None = every live site), the model to send (None = the
    current global model), and whether the round is skipped. Only 'train' rounds change the global model."""

    task: TaskKind = TaskKind.TRAIN
    targets: list[str] | None = None
    model: Params | None = None
    skip: bool = False
    aggregate: bool = True
    """False when the round's results are aggregated elsewhere (swarm): the server's model stays."""
    once: bool = False
    """Hand the task to each site once (its result goes elsewhere, so the server cannot see it arrive)."""
    coordinator: str | None = None
    """A site the round depends on (the swarm aggregator): if it dies, the server restarts the round."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Task meta added by the host, not the strategy: the previous round's aggregated metrics
    (``initial_metrics``, NVFlare's convention); a relay passes on its server's task meta."""


@dataclasses.dataclass(frozen=True)
class AnyLength:
    """What an upload's 1-D tensor must look like when its length is the site's to choose (a serialized tree
    model, a list of encrypted IDs): the dtype is fixed, the length only bounded (and by max_model_bytes)."""

    dtype: np.dtype
    max_elements: int | None = None
    keeps_partials: bool = False
    """True when relays' partial results have this same form (summed ciphertexts), not float sums."""

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 1 and (self.max_elements is None or shape[0] <= self.max_elements)

    def describe(self) -> str:
        return f"1-D {np.dtype(self.dtype)} of any length" + (
            f" up to {self.max_elements}" if self.max_elements is not None else ""
        )


def shape_matches(shape: tuple[int, ...], expected: Any) -> bool:
    """An upload tensor's shape against its expectation (an array-like's exact shape, or an AnyLength)."""
    if isinstance(expected, AnyLength):
        return expected.accepts(tuple(shape))
    return tuple(shape) == tuple(expected.shape)


def describe_expectation(expected: Any) -> str:
    return expected.describe() if isinstance(expected, AnyLength) else f"{tuple(expected.shape)}"


class Aggregator(abc.ABC):
    """Consumes updates one at a time; must not keep references to them (memory O(model), not O(clients))."""

    decomposable: bool = False
    """True when partial results (e.g. a relay's weighted sums) can be merged: see partial()/add_partial()."""
    concurrent: bool = False
    """True when add() may run in several threads at once (it locks what it shares); False: the host calls it
    from one thread at a time."""

    @abc.abstractmethod
    def add(self, update: ClientUpdate) -> None: ...

    def partial(self) -> tuple[Params, dict[str, float]]:
        """The state a relay sends up: per-tensor weighted sums and weight totals."""
        raise NotImplementedError(f"{type(self).__name__} cannot be decomposed; relays forward raw updates")

    def add_partial(self, sums: Params, weights: dict[str, float], count: int) -> None:
        """Merge another aggregator's partial() (from a relay)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be decomposed; relays forward raw updates")

    def check_partial_sites(self, sites: list[str]) -> None:
        """Called before a relay's partial over ``sites`` is merged; raise to refuse it (secure aggregation
        accepts only sites that took part in the round's key exchange)."""

    @abc.abstractmethod
    def result(self) -> Params:
        """The new global params; called once, after the round closed."""

    def result_items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Like result(), lazily: lets the caller encode and free tensor by tensor."""
        yield from self.result().items()

    @property
    @abc.abstractmethod
    def count(self) -> int: ...


class PassThroughAggregator(Aggregator):
    """For rounds that leave the global model as it is (submitted models, statistics): subclasses only
    observe each update in ``add``."""

    def __init__(self, global_params: Mapping[str, np.ndarray]) -> None:
        self._global, self._count = global_params, 0

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> Params:
        return dict(self._global)

    def result_items(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self._global.items()


@dataclasses.dataclass(frozen=True)
class ServerContext:
    """What the server rank offers a strategy that runs a service beside it (XGBoost's federated tracker)."""

    job_root: Any
    host: str
    """The host name or address the clients reach the server rank at (its advertised address, no port)."""
    kit_dir: Any
    """The server's startup kit directory (rootCA.pem, cert.pem, key.pem) when the job uses mutual TLS, else None."""
    log: Any
    live: Callable[[], set[str]] = set
    """The sites the server currently counts as alive (protocols that wait on sites stop waiting for the dead)."""


class Strategy(abc.ABC):
    """An FL algorithm on the server: what to send each round and how to combine what comes back."""

    name: str = "strategy"
    supports_relays: bool = True
    """False for workflows whose rounds address single sites or collect whole models (cyclic, cross-site)."""

    def attach(self, job_root: Any) -> None:
        """Called by the server with the job directory, for strategies that write results of their own."""

    def attach_host(self, job_root: Any, kit_dir: Any) -> None:
        """Called on every rank that aggregates (server, relays, client ranks) with the job directory and the
        rank's startup kit (None without TLS): strategies that need files there (HE's public context)."""

    def start_services(self, context: ServerContext) -> None:
        """Called on the server rank before registration, for strategies with a service of their own."""

    def stop_services(self) -> None:
        """Called when the server rank ends, however it ends: stop what start_services started."""

    def on_register(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        """A site registered with the server; returns extra fields for its reply (swarm: the peer secret)."""
        return {}

    def coordinator_report(self, site: str, report: dict[str, Any]) -> None:
        """The round's coordinator (``RoundPlan.coordinator``) reported how its round went."""

    def initial_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The round-1 global model from the job's initial model (SCAFFOLD adds its control variates)."""
        return params

    def state_dict(self) -> Params:
        """Server-side state that must survive a restart (optimizer moments...), saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore ``state_dict()`` after a resume."""

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        """Which task this round runs and for whom (default: train, every live site)."""
        return RoundPlan()

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        """After a round: every accepted site's metrics (submitted models reach the strategy through its
        aggregator)."""

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        """Extra meta sent to clients with the round's task (default: nothing)."""
        return {}

    def check_aggregate(self, round_num: int) -> None:
        """Called after a training round's aggregate is made and before it is checkpointed or served: raise
        RoundFailedError when the aggregate is known to be broken (default: nothing more to check)."""

    def exchange(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        """A site's protocol message beyond tasks and results (secure aggregation's key and share exchange),
        relayed unchanged by relays; strategies without such a protocol refuse it."""
        raise MalformedMessageError(f"strategy {self.name!r} takes no Exchange messages")

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        """What a result's tensors must look like (default: the round's model, name for name, shape for shape);
        tree and set-based strategies name tensors whose length the site chooses (:class:`AnyLength`)."""
        return global_params

    @abc.abstractmethod
    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator: ...
