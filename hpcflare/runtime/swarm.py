"""Swarm learning, site side: every site runs a small peer host; the round's aggregator folds its peers'
updates and serves the result for the next round (see hpcflare.strategy.swarm for the protocol).

Peer tokens are HMAC(job swarm secret, site name): each site can prove its name to the aggregator
without the aggregator learning the site's server token. Under mutual TLS the certificate name is bound
to the site as everywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.plugins import SITE_SIDES
from hpcflare.runtime.cluster.rendezvous import advertise_host
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.round_host import RoundHost
from hpcflare.runtime.site.agent import ClientAgent
from hpcflare.runtime.site.hooks import SiteHooks
from hpcflare.strategy.api import RoundPlan, UpdateKind
from hpcflare.strategy.fedavg import FedAvg
from hpcflare.transport.api import Peer, Rpc, Task, UploadHeader
from hpcflare.transport.codec import TensorSpec, decode_tensor
from hpcflare.transport.grpc_client import GrpcClientTransport
from hpcflare.transport.grpc_server import GrpcServer

SWARM_ROUND_FRACTION = 0.9
"""The aggregator closes its round at this fraction of settings.round_timeout after it opened it."""


class SwarmPeer(RoundHost):
    role = "swarm-peer"

    def __init__(self, agent: ClientAgent, host: str, advertise: str | None) -> None:
        super().__init__(
            agent.config,
            agent.settings,
            agent.log,
            FedAvg(),
            Membership(agent.config.clients, agent.settings.heartbeat_timeout),
        )
        self.agent = agent
        self.published: GlobalModel | None = None
        self.grpc = GrpcServer(self, agent.settings, agent.log, host=host, port=0, kit=agent.kit)
        self.address = f"{advertise or host}:{self.grpc.port}"
        self.phase = "running"

    def enrol(self, secret: str) -> None:
        for site in self.config.clients:
            self.members.register(site, token=peer_token(secret, site))

    def register(self, request: dict, peer: Peer | None = None) -> dict:
        raise errors.MalformedMessageError("swarm peers do not take registrations; register with the server")

    def handle_unary(self, method: Rpc, request: dict, peer: Peer) -> dict:
        raise errors.MalformedMessageError(
            f"swarm peers serve only model pulls and updates, not {str(method)!r}"
        )

    def handle_download(self, request: dict, peer: Peer) -> Iterator[bytes]:
        self.authorize(peer, request.get("site"))
        self.members.check(request.get("site"), request.get("token"))
        model = self.published
        if model is None or request.get("ref") != model.ref:
            raise errors.StaleTaskError(f"model {request.get('ref')!r:.40} is not the one this peer holds")
        return self.serve(model, request)


def peer_token(secret: str, site: str) -> str:
    return hmac.new(secret.encode(), site.encode(), hashlib.sha256).hexdigest()


class SwarmSide(SiteHooks):
    """What a site does differently in a swarm job: peer host, pulls from peers, pushes to the aggregator."""

    def __init__(self, agent: ClientAgent) -> None:
        self.agent = agent
        bind = "0.0.0.0" if os.environ.get("SLURM_JOB_ID") else "127.0.0.1"
        self.peer = SwarmPeer(agent, bind, advertise_host() if bind == "0.0.0.0" else None)
        self.peer.grpc.start()
        self.address = self.peer.address
        self.secret = ""

    def registration_fields(self) -> dict[str, Any]:
        return {"peer": self.address}

    def on_registered(self, reply: dict[str, Any]) -> None:
        self.secret = str(reply.get("swarm_secret", ""))
        self.peer.enrol(self.secret)

    @property
    def token(self) -> str:
        return peer_token(self.secret, self.agent.site)

    def on_task(self, task: Task) -> None:
        source = (task.meta.get("swarm") or {}).get("source")
        if source:  # this round's model lives at the previous aggregator
            task.ref = str(source["ref"])
            task.manifest = [TensorSpec.from_wire(m) for m in source["manifest"]]

    def fetch(self, task: Task) -> dict[str, Any] | None:
        meta = task.meta.get("swarm") or {}
        source = meta.get("source")
        if source and source["name"] == self.agent.site and self.peer.published is not None:
            params = {k: _copy(v, self.agent.config.framework) for k, v in self.peer.published.params.items()}
        elif source:
            transport = self._transport(source["address"], source["name"])
            try:
                request = {"site": self.agent.site, "token": self.token, "ref": task.ref}
                params = {
                    spec.name: decode_tensor(blob, spec, self.agent.config.framework)
                    for spec, blob in transport.download(request, task.manifest)
                }
            finally:
                transport.close()
        else:
            params = None  # round 1: from the server
        return params

    def opened(self, task: Task, params: dict[str, Any]) -> None:
        """Called with the round's model once fetched: the aggregator opens its peer round."""
        meta = task.meta.get("swarm") or {}
        if meta.get("aggregator") != self.agent.site:
            return
        base = {k: np.array(_numpy(v), copy=True) for k, v in params.items()}  # the script may edit its copy
        rnd = self.peer.open_round(
            task.round, GlobalModel(base, task.round), task.task_id, publish=False, plan=RoundPlan()
        )
        self.agent.log.info(
            "swarm_aggregating",
            f"round {task.round}: aggregating for {len(meta.get('expect', []))} sites",
            round=task.round,
        )
        threading.Thread(
            target=self._finish,
            args=(task, rnd, set(meta.get("expect") or [])),
            name="swarm-aggregator",
            daemon=True,
        ).start()

    def _finish(self, task: Task, rnd: Any, expect: set[str]) -> None:
        deadline = rnd.started + SWARM_ROUND_FRACTION * self.agent.settings.round_timeout
        with self.peer._cv:
            while not expect <= rnd.answered() and time.monotonic() < deadline:
                self.peer._cv.wait(0.2)
        self.peer.close_round(rnd)
        model = GlobalModel(rnd.aggregator.result_items(), task.round)
        self.peer.published = model
        missing = sorted(expect - rnd.answered())
        rejected = {
            **rnd.rejected,
            **{s: "straggler: no update at the swarm aggregator in time" for s in missing},
        }
        try:
            transport, token = self.agent.connection.credentials()
            header = UploadHeader(
                self.agent.site,
                token,
                task.task_id,
                task.round,
                UpdateKind.FULL,
                swarm={
                    "accepted": rnd.accepted,
                    "rejected": rejected,
                    "ref": model.ref,
                    "manifest": [s.to_wire() for s in model.specs],
                },
            )
            transport.upload(header, list(model.params.items()))
            self.agent.log.info(
                "swarm_aggregated",
                f"round {task.round}: aggregated {len(rnd.accepted)} update(s)"
                + (f"; missing {missing}" if missing else ""),
                round=task.round,
                sites=sorted(rnd.accepted),
            )
        except errors.HpcflareError as exc:
            self.agent.log.error(
                "swarm_report_failed", f"round {task.round}: could not report to the server: {exc}"
            )

    def deliver(self, task: Task, header: UploadHeader, params: dict[str, Any]) -> bool:
        """Results of a swarm round go to the round's aggregating site, not to the server."""
        meta = task.meta.get("swarm")
        if not meta:
            return False
        address, name = meta.get("aggregator_address"), meta.get("aggregator")
        if not address:
            raise errors.PeerGoneError(
                f"round {task.round}: the swarm aggregator {name!r} has no peer address"
            )
        transport = self._transport(address, name)
        s = self.agent.settings
        deadline = time.monotonic() + s.round_timeout
        unreachable_since: float | None = None
        try:
            while True:
                try:
                    transport.upload(dataclasses.replace(header, token=self.token), params.items())
                    return True
                except (errors.StaleTaskError, errors.PeerGoneError) as exc:
                    now = time.monotonic()
                    if isinstance(exc, errors.PeerGoneError):
                        unreachable_since = unreachable_since or now
                        if now - unreachable_since > s.heartbeat_timeout:
                            # the server declares it dead by now and restarts the round with another aggregator
                            self.agent.log.warning(
                                "swarm_aggregator_lost",
                                f"round {task.round}: aggregator {name} "
                                f"unreachable for settings.heartbeat_timeout={s.heartbeat_timeout:g}s;"
                                " result dropped, waiting for the restarted round",
                                round=task.round,
                            )
                            return True
                    if now >= deadline:  # never ready: the round is over
                        raise
                    self.agent.log.info(
                        "swarm_retry", f"round {task.round}: aggregator {name} not ready ({exc})"
                    )
                    time.sleep(0.3)
        finally:
            transport.close()

    def _transport(self, address: str, name: str) -> GrpcClientTransport:
        return GrpcClientTransport(address, self.agent.settings, self.agent.kit, peer_name=name)

    def close(self) -> None:
        self.peer.grpc.stop(0.5)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _copy(value: np.ndarray, framework: str) -> Any:
    out = np.array(value, copy=True)
    if framework == "pytorch":
        import torch

        return torch.from_numpy(out)
    return out


SITE_SIDES.register("swarm", SwarmSide)
