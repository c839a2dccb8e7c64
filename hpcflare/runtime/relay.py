"""A relay rank: the server's rounds, hosted for a subset of clients, with one partial aggregate sent up.

Children register through the relay (it forwards the registration, so the server knows every client and
issues its token), pull the round's model from the relay's single cached copy (the blobs exactly as the
server sent them), and upload to the relay, which validates and folds each result into a weighted partial
sum. When all its live children answered, or at ``RELAY_ROUND_FRACTION x round_timeout`` after it got the
task, the relay sends that partial sum up once: server traffic and memory grow with relays, not clients.
Strategies that cannot be decomposed (FedMedian) get every validated update forwarded unchanged instead.
The relay's heartbeats carry the names of the children it heard from, so the server's view of liveness
stays exact; if the relay dies, its children fail over to the server (``relay_failover='direct'``).
"""

from __future__ import annotations

import os
from typing import Any

from hpcflare import errors
from hpcflare.exitcodes import ExitCode, exit_for
from hpcflare.job import JobDir
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.memory import release_memory
from hpcflare.runtime.cluster.rendezvous import FileRendezvous, incarnation
from hpcflare.runtime.cluster.staging import Stager
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.round_host import HostPhase, RoundHost
from hpcflare.runtime.relay_rounds import RelayRounds
from hpcflare.runtime.site.agent import ClientAgent
from hpcflare.strategy.api import ClientUpdate
from hpcflare.transport.api import Peer, Rpc, UploadHeader
from hpcflare.transport.grpc_server import GrpcServer

RELAY_ROUND_FRACTION = 0.9
"""A relay closes its part of a round at this fraction of settings.round_timeout, so its partial still
reaches the server before the server's own deadline."""


def register_own_rank(relay: Relay, request: dict[str, Any]) -> dict[str, Any]:
    """Register an institution's own client rank at its relay only (see ``Relay.own_ranks``); its token is the
    relay's to give."""
    record, _ = relay._add_member(request)
    node = str(request.get("node") or "")[:128]
    relay.log.info(
        "client_rank_registered",
        f"{record.site} registered from {record.host or '?'}{'/' + node if node else ''} pid {record.pid}",
        site=record.site,
        node=node,
    )
    config = relay.config
    return {
        "token": record.token,
        "job_id": config.job_id,
        "num_rounds": config.num_rounds,
        "framework": config.framework,
    }


class Relay(RelayRounds, RoundHost):
    role = "relay"
    listens = True
    """A relay serves its children over gRPC; a client rank's host serves its sites in-process."""
    upstream_in_process = False
    """Reach the parent in-process when it lives in this process (a client rank beside SimEnv's server)."""
    round_fraction = RELAY_ROUND_FRACTION
    """When this host closes its part of a round, as a fraction of settings.round_timeout after the task."""

    def __init__(
        self,
        job_dir: JobDir,
        name: str,
        log: RankLogger,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        children: list[str] | None = None,
        address: str | None = None,
    ) -> None:
        """``children``: the sites this host serves (default: every client and client rank of the job);
        ``address``: the parent's address (default: the server, found through the rendezvous)."""
        config = job_dir.load_config()
        settings = config.load_settings()
        stager = Stager(config.staging_root(job_dir.root)) if config.staging else None
        ranks = config.rank_hosts()
        expected = children if children is not None else config.clients + list(ranks)
        super().__init__(
            config,
            settings,
            log,
            config.new_strategy(),
            Membership(expected, settings.heartbeat_timeout),
            stager,
        )
        self.hosts = {rank: set(sites) for rank, sites in ranks.items() if rank in expected}
        self.forward_raw = not self.strategy.new_aggregator({}).decomposable
        self.job_dir, self.name = job_dir, name
        self.own_ranks = set(config.site_ranks.get(name, []))
        """An institution's relay (named as its site): its own client ranks, which only it knows (they register
        here, not upstream), and which it serves models through the site's own staging directory, if any."""
        self._registering: set[str] = set()
        """Children whose registration is on its way to the server: the server may already count them (and
        start a round) before this host has their record, so a round here waits for them too."""
        self._last_model: tuple[str, GlobalModel] | None = None
        """(task id, model) of the last task this host pulled: served again without a new download."""
        self.leaving = False
        """Set when this host's children are all gone: it says goodbye at its next poll instead of waiting."""
        # the host's own link to its parent: a client agent whose heartbeats vouch for the children
        self.upstream = ClientAgent(
            job_dir,
            name,
            log,
            address,
            heartbeat_extra=lambda: {
                "children": self.members.live(),
                **self.monitor.heartbeat_samples(name, self.role),
            },
            in_process=self.upstream_in_process,
        )
        self.upstream.connection.on_reconnect = self._register_children_again
        self.strategy.attach_host(job_dir.root, self.upstream.kit.path if self.upstream.kit else None)
        self.grpc: GrpcServer | None = None
        self.address = ""
        if self.listens:
            direct = len(self.hosts) or len(config.clients)  # with client ranks, only they connect here
            self.grpc = GrpcServer(
                self,
                settings,
                log,
                host=host,
                port=port,
                kit=self.upstream.kit,
                children=min(direct, 2 * -(-direct // max(1, config.relays))),
            )
            self.address = f"{advertise or host}:{self.grpc.port}"

    def register(self, request: dict, peer: Peer | None = None) -> dict:
        if not isinstance(request.get("site"), str) or request["site"] not in self.members.expected:
            self.log.warning(
                "register_refused",
                f"refused the registration of {request.get('site')!r:.80} from {peer}: not one of this relay's sites",
                site=str(request.get("site"))[:80],
            )
            raise errors.RegistrationRefusedError(f"site {request.get('site')!r:.80} is not part of this job")
        if request["site"] in self.own_ranks:  # the site's own client rank: the server knows only the site
            return register_own_rank(self, request)
        with self._cv:
            self._registering.add(request["site"])
        try:
            reply = self.upstream.call(Rpc.REGISTER, {**request, "via": self.name}, self.settings.rpc_timeout)
            record, _ = self._add_member(request, token=reply["token"])
        finally:
            with self._cv:
                self._registering.discard(request["site"])
                self._cv.notify_all()
        self.site_log("child_registered", f"{record.site} registered through {self.name}", site=record.site)
        return reply

    def may_act_for(self, identity: str, site: str) -> bool:
        """An institution's relay: its own ranks show the site's certificate, and act for the site's clients."""
        if self.own_ranks and identity == self.name:
            return site in self.members.expected
        return super().may_act_for(identity, site)

    def _register_children_again(self) -> None:
        """The server restarted (requeue, resume): register every live child again under its current token, so
        the children go on without noticing (the server keeps a token shown by a site it has no record of)."""
        again = 0
        for site in self.members.live():
            record = self.members.get(site)
            if record is None or site in self.own_ranks:
                continue
            try:
                self.upstream.call(
                    Rpc.REGISTER,
                    {
                        "site": site,
                        "host": record.host,
                        "pid": record.pid,
                        "via": self.name,
                        "proof": self.job_dir.registration_proof(site),
                        "previous_token": record.token,
                    },
                    self.settings.rpc_timeout,
                )
                again += 1
            except errors.HpcflareError as exc:
                self.log.warning(
                    "child_reregister_failed", f"could not register {site} again: {exc}", site=site
                )
        self.log.info(
            "children_reregistered",
            f"{again} children registered again with the restarted server",
            children=again,
        )

    def _fold(self, rnd: Any, update: ClientUpdate) -> None:
        """Non-decomposable strategies: pass each validated update up unchanged, in the child's name."""
        if not self.forward_raw:
            return super()._fold(rnd, update)
        record = self.members.get(update.site)
        header = UploadHeader(
            update.site,
            record.token if record else "",
            rnd.task_id,
            rnd.number,
            update.params_type,
            update.meta,
            update.metrics,
        )
        self._send_up(header, update.params.items(), own_token=False)
        with self._cv:
            rnd.accepted[update.site] = update.metrics
        self.site_log(
            "result_forwarded",
            f"round {rnd.number}: result from {update.site} forwarded to the server",
            site=update.site,
            round=rnd.number,
        )

    def on_goodbye(self, site: str, status: str, reason: str) -> None:
        if site in self.own_ranks:
            return
        try:  # the server learns of a child's end from its relay
            self._forward(Rpc.GOODBYE, site, {"status": status, "reason": reason})
        except errors.HpcflareError as exc:
            self.log.warning(
                "goodbye_forward_failed", f"could not forward {site}'s goodbye: {exc}", site=site
            )

    def on_exchange(self, site: str, request: dict) -> dict:
        return self._forward(Rpc.EXCHANGE, site, request)

    def on_track(self, site: str, records: list) -> None:
        # a flood is cut here, before it costs the server anything
        records = self.admit_tracking(site, records)
        if records:
            self._forward(Rpc.TRACK, site, {"records": records})  # a failure reaches the child, which logs it

    def _forward(self, method: str, site: str, request: dict) -> dict:
        """A unary call to the server in a child's name (its token; the relay's certificate may act for it)."""
        transport, _ = self.upstream.connection.credentials()
        return transport.call(
            method,
            {**request, "site": site, "token": self.members.get(site).token},  # type: ignore[union-attr]
            self.settings.rpc_timeout,
        )

    def start(self) -> None:
        """Listen for children, register upstream, announce this relay in the rendezvous directory."""
        assert self.grpc is not None
        self.grpc.start()
        self.watch_stalls()
        self.upstream.start()
        FileRendezvous(self.job_dir.rendezvous_dir, self.settings.rendezvous_timeout).publish(
            self.name, self.address, incarnation(), node=os.environ.get("SLURMD_NODENAME", "")
        )
        self.log.info(
            "relay_started",
            f"{self.name} listening on {self.address}",
            address=self.address,
            node=os.environ.get("SLURMD_NODENAME", ""),
        )
        self.phase = HostPhase.RUNNING

    def stop_listening(self) -> None:
        if self.grpc is not None:
            self.grpc.stop()

    def run(self) -> ExitCode:
        self.start()
        return self.serve_rounds()

    def serve_rounds(self) -> ExitCode:
        """Mirror the parent's rounds until the job ends (or, once ``leaving``, until the next poll)."""
        code, status, reason = ExitCode.OK, "done", ""
        try:
            last: str | None = None
            while not self.leaving:
                task = self.upstream.next_task(self.settings.task_poll_timeout, last)
                if task is None:
                    if self.upstream.ended:
                        break
                    continue
                last = task.task_id
                try:
                    self._relay_round(task)
                except errors.StaleTaskError as exc:
                    # the parent closed the round before this host got its model
                    self.log.info(
                        "relay_round_gone",
                        f"round {task.round} closed before {self.name} had its model: {exc}",
                        round=task.round,
                    )
                release_memory()
            self.end(
                self.upstream.end_reason or ("its sites have all ended" if self.leaving else "completed")
            )
        except errors.HpcflareError as exc:
            code, reason = exit_for(exc)
            status = "failed"
            self.log.error("relay_failed", f"{self.name} stops: {reason}", exit_code=int(code))
            self.end(f"relay failed: {exc}")
        finally:
            self.drain(self.settings.end_grace)
            self.stop_listening()
            self.upstream.close(status, reason)
        return code


__all__ = ["Relay", "RELAY_ROUND_FRACTION"]
