"""A host's unary RPCs: registration goes to the host itself; heartbeats, the task long poll, tracking records,
memory-file offers, strategy messages and goodbyes go through one dispatch table, after the caller's token
is checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hpcflare import errors
from hpcflare.job import JobConfig
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.membership import Membership, MemberState
from hpcflare.runtime.host.phase import HostPhase
from hpcflare.runtime.host.round import Round
from hpcflare.settings import Settings
from hpcflare.strategy.api import Strategy
from hpcflare.transport.api import Peer, Rpc

MAX_TRACK_RECORDS = 4096
"""Most tracking records one Track call may carry (sites send at most TRACK_BATCH per call)."""


class UnaryRpcs:
    """Mixed into :class:`~hpcflare.runtime.host.round_host.RoundHost`: its unary calls, by :class:`Rpc`."""

    config: JobConfig
    settings: Settings
    log: RankLogger
    strategy: Strategy
    members: Membership
    round: Round | None
    phase: HostPhase
    end_reason: str
    staged: dict[str, Any] | None
    site_log: Callable[..., None]
    _cv: threading.Condition
    _task_cv: threading.Condition
    _goodbyes: set[str]
    authorize: Callable[[Peer, Any], None]
    register: Callable[[dict[str, Any], Peer | None], dict[str, Any]]
    on_heartbeat: Callable[[str, dict[str, Any]], None]
    on_track: Callable[[str, list[Any]], None]
    on_exchange: Callable[[str, dict[str, Any]], dict[str, Any]]
    on_goodbye: Callable[[str, str, str], None]
    map_model: Callable[[dict[str, Any]], dict[str, Any]]

    UNARY_HANDLERS: dict[Rpc, str] = {
        Rpc.HEARTBEAT: "_rpc_heartbeat",
        Rpc.GET_TASK: "_get_task",
        Rpc.TRACK: "_rpc_track",
        Rpc.MAP_MODEL: "_rpc_map_model",
        Rpc.EXCHANGE: "_rpc_exchange",
        Rpc.GOODBYE: "_rpc_goodbye",
    }
    """The unary methods a registered member may call, each handled by ``method(site, request)``."""

    def handle_unary(self, method: Rpc, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.authorize(peer, request.get("site"))
        if method == Rpc.REGISTER:
            return self.register(request, peer)
        record = self.members.check(request.get("site"), request.get("token"))
        handler = self.UNARY_HANDLERS.get(method)
        if handler is None:
            raise errors.MalformedMessageError(f"unknown method {str(method)!r}")
        reply: dict[str, Any] = getattr(self, handler)(record.site, request)
        return reply

    def _rpc_heartbeat(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        self.on_heartbeat(site, request)
        return {"phase": str(self.phase)}

    def _rpc_track(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        records = request.get("records")
        if not isinstance(records, list) or len(records) > MAX_TRACK_RECORDS:
            raise errors.MalformedMessageError(
                f"Track: records must be a list of at most {MAX_TRACK_RECORDS}"
            )
        self.on_track(site, records)
        return {}

    def _rpc_map_model(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.map_model(request)

    def _rpc_exchange(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.on_exchange(site, {k: v for k, v in request.items() if k not in ("site", "token")})

    def _rpc_goodbye(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        status, reason = str(request.get("status", "done")), str(request.get("reason", ""))[:2000]
        self.on_goodbye(site, status, reason)  # passed on (by a relay) before drain() counts it
        with self._cv:
            self._goodbyes.add(site)
            self.members.mark(site, MemberState.DONE if status == "done" else MemberState.FAILED, reason)
            self._cv.notify_all()
        if status != "done":
            self.log.warning("client_failed", f"{site} failed: {reason}", site=site, reason=reason)
        else:
            self.site_log("client_done", f"{site} finished", site=site)
        return {}

    def _get_task(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        wait = min(
            float(request.get("timeout") or self.settings.task_poll_timeout), self.settings.task_poll_timeout
        )
        deadline = time.monotonic() + wait
        record = self.members.get(site)
        if record is not None and record.state in (MemberState.DEAD, MemberState.EXCLUDED):
            # the job goes on without this site: it ends now (exit 0) instead of holding its allocation
            return {"task": "end", "reason": f"the job continues without {site}: {record.reason}"}
        with self._task_cv:
            while True:
                if self.phase == HostPhase.ENDED:
                    return {"task": "end", "reason": self.end_reason}
                rnd = self.round
                # a site gets the open round's task until a result of its counts (a result lost with a dead
                # relay is simply asked for again)
                if (
                    rnd is not None
                    and rnd.open
                    and site not in rnd.answered()
                    and site not in rnd.partials
                    and (rnd.plan.targets is None or site in rnd.plan.targets)
                    and not (rnd.plan.once and request.get("last_task_id") == rnd.task_id)
                ):
                    self.members.mark(site, MemberState.ACTIVE)
                    if rnd.task_reply is None:  # the same for every child: built once per round
                        rnd.task_reply = {
                            "task": str(rnd.plan.task),
                            "task_id": rnd.task_id,
                            "round": rnd.number,
                            "total_rounds": self.config.num_rounds,
                            "ref": rnd.model.ref,
                            "manifest": [s.to_wire() for s in rnd.model.specs],
                            "meta": {
                                **self.strategy.configure_round(rnd.number, self.config.num_rounds),
                                **rnd.plan.meta,
                            },
                            "staged": self.staged,
                        }
                    return rnd.task_reply
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return {"task": "wait"}
                self._task_cv.wait(remaining)
