"""A relay's part of a round: the parent's model pulled once and served from one cached copy, the round closed
when every live child answered (or at ``round_fraction x round_timeout``), and one partial sum sent up in the
relay's own name, retried through its link like a site's result.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.staging import Stager
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.round import Round
from hpcflare.runtime.site.agent import ClientAgent
from hpcflare.runtime.site.result_sender import upload_once
from hpcflare.settings import Settings
from hpcflare.strategy.api import RoundPlan, UpdateKind
from hpcflare.transport.api import Rpc, Task, UploadHeader
from hpcflare.transport.inproc import InprocTransport


class RelayRounds:
    """Mixed into :class:`~hpcflare.runtime.relay.Relay` (a RoundHost): how it hosts its part of each round."""

    name: str
    settings: Settings
    log: RankLogger
    upstream: ClientAgent
    listens: bool
    round_fraction: float
    forward_raw: bool
    staged: dict[str, Any] | None
    stager: Stager | None
    own_ranks: set[str]
    _last_model: tuple[str, GlobalModel] | None
    _registering: set[str]
    _cv: threading.Condition
    live_children: Callable[[], set[str]]
    open_round: Callable[..., Round]
    close_round: Callable[[Round], None]
    expire_dead: Callable[[int], None]

    def _cached_model(self, task: Task) -> tuple[GlobalModel, str]:
        """The round's model, pulled once from the parent: the blobs exactly as they came (and how it came); a host
        that serves in-process (a client rank) keeps them in the memory file its sites map. The same task again
        (this host closed its part early, e.g. before any child had connected) reuses the copy it has."""
        if self._last_model is not None and self._last_model[0] == task.task_id:
            return self._last_model[1], "cache"
        self._last_model = None

        # retried through the link: a restarted parent means a new transport
        def fetch() -> tuple[GlobalModel, str]:
            transport, token = self.upstream.connection.credentials()
            request = {"site": self.name, "token": token, "ref": task.ref}
            shared = transport.shared_model(request, task.manifest)  # a parent on this host: its very pages
            if shared is not None:
                return GlobalModel.from_shared(task.ref, task.round, shared), "shared memory"
            blobs = {spec.name: blob for spec, blob in transport.download(request, task.manifest)}
            return (
                GlobalModel.from_blobs(task.ref, task.round, task.manifest, blobs, shared=not self.listens),
                "in-process" if isinstance(transport, InprocTransport) else "grpc",
            )

        model, via = self.upstream.connection.retry(Rpc.DOWNLOAD, fetch)
        self._last_model = (task.task_id, model)
        return model, via

    def _relay_round(self, task: Task) -> None:
        received = time.monotonic()
        model, via = self._cached_model(task)
        # children that see the staging dir map the server's copy; an institution's relay stages its own
        own = bool(self.own_ranks) and self.stager is not None
        self.staged = task.staged if self.listens and not own else None
        rnd = self.open_round(
            task.round, model, task.task_id, publish=own, plan=RoundPlan(task.name, meta=task.meta)
        )
        self.log.info(
            "relay_round",
            f"round {task.round}: model cached ({model.nbytes / 1e6:.2f} MB via {via}), "
            f"serving {len(self.live_children())} children",
            round=task.round,
            via=via,
        )
        deadline = received + self.round_fraction * self.settings.round_timeout
        with self._cv:
            while True:
                self.expire_dead(task.round)
                live = self.live_children()
                if (live <= rnd.answered() and not self._registering) or time.monotonic() >= deadline:
                    break
                self._cv.wait(0.2)
        self.close_round(rnd)
        stragglers = sorted(self.live_children() - rnd.answered())
        rejected = {
            **rnd.rejected,
            **{
                s: f"straggler: no result at {self.name} within "
                f"{self.round_fraction} x settings.round_timeout"
                for s in stragglers
            },
        }
        if not rnd.accepted and not rejected and not self.live_children():
            # no child here (yet): wait for a registration instead of asking for the task again at once
            with self._cv:
                if not self._registering:
                    self._cv.wait(min(2.0, self.settings.task_poll_timeout))
        if self.forward_raw or (not rnd.accepted and not rejected):
            return  # forwarded one by one already; the server tracks stragglers itself
        sums, weights = rnd.aggregator.partial()
        try:
            header = UploadHeader(
                self.name,
                "",
                task.task_id,
                task.round,
                UpdateKind.PARTIAL,
                partial={
                    "sites": {
                        s: {"metrics": m, "weight": rnd.weights.get(s, 1.0)} for s, m in rnd.accepted.items()
                    },
                    "rejected": rejected,
                    "weights": weights,
                },
            )
            transport = self._send_up(header, list(sums.items()), own_token=True)
            via = getattr(transport, "last_via", "in-process")
            self.log.info(
                "partial_sent",
                f"round {task.round}: partial aggregate over {len(rnd.accepted)} client(s) sent up via {via}",
                round=task.round,
                sites=sorted(rnd.accepted),
                stragglers=stragglers,
                via=via,
            )
        except errors.StaleTaskError as exc:
            self.log.warning("partial_late", f"round {task.round}: server closed the round first: {exc}")

    def _send_up(self, header: UploadHeader, tensors: Any, own_token: bool) -> Any:
        """Upload to the parent, retried through the link as a site's result is: a parent that is briefly gone
        or restarted (then on a new transport, with this round gone: StaleTaskError) does not end this host.
        ``own_token``: sent in this host's name (a partial), else in the child's (a forwarded update)."""

        def push() -> Any:
            transport, token = self.upstream.connection.credentials()
            transport.upload(dataclasses.replace(header, token=token) if own_token else header, tensors)
            return transport

        return self.upstream.connection.retry(Rpc.UPLOAD, lambda: upload_once(push))
