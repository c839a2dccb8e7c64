"""Swarm learning: the sites aggregate, the server only manages the job.

Each round one site is the aggregator (rotating through the live sites in job order). Every site pulls the
round's model from the previous round's aggregator (round 1: from the server's initial model), trains, and
uploads its update to this round's aggregator, which folds them in time (FedAvg) and keeps the new model to
serve next round. The aggregator then tells the server which sites it accepted (no tensors), so the
server can track the round, stragglers and deaths as usual, and hands the server one copy of the new model
(no aggregation there: it is the round's checkpoint, the job's result, and the fallback source when the
site holding it dies). If the aggregator dies mid-round, the server restarts the round with another one. Peer traffic uses the sites' own startup
kits (mutual TLS, certificate names bound to site names) when the job runs with TLS.

Site side: ``hpcflare.runtime.swarm``; the training script is an ordinary FedAvg client script.
An aggregator that dies takes the round's updates with it: the sites train that round again for the next
aggregator (the round restarts as soon as the server declares it dead, after settings.heartbeat_timeout).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import Aggregator, RoundPlan, Strategy, TaskKind


class Swarm(Strategy):
    name = "swarm"
    supports_relays = False

    def __init__(self) -> None:
        self.peers: dict[str, str] = {}  # site -> its peer host address, from its registration
        self.secret = secrets.token_hex(16)  # peer tokens derive from it (hpcflare.runtime.swarm.peer_token)
        self.source: dict[str, Any] | None = None  # where this round's model is: the last aggregator's copy
        self.aggregator = ""
        self._meta: dict[str, Any] = {}

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        candidates = [s for s in live if s in self.peers] or live
        self.aggregator = candidates[(round_num - 1) % len(candidates)] if candidates else ""
        if self.source is not None and self.source["name"] not in live:
            self.source = None  # the site holding the last model is gone: the server's checkpoint copy serves
        self._meta = {
            "aggregator": self.aggregator,
            "aggregator_address": self.peers.get(self.aggregator, ""),
            "expect": live,
            "source": self.source,
        }
        return RoundPlan(task=TaskKind.TRAIN, once=True, coordinator=self.aggregator or None)

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        return {"swarm": self._meta}

    def on_register(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        peer = request.get("peer")
        if isinstance(peer, str) and len(peer) < 300:
            self.peers[site] = peer
        return {"swarm_secret": self.secret}

    def coordinator_report(self, site: str, report: dict[str, Any]) -> None:
        """The round's aggregator finished: next round's model is at its peer host."""
        self.source = {
            "name": site,
            "address": self.peers.get(site, ""),
            "ref": str(report.get("ref", "")),
            "manifest": list(report.get("manifest") or []),
        }

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return WeightedMeanAggregator(global_params)  # the aggregator's model: one FULL result, taken as is
