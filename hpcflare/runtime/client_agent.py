"""A site's connection to the job: rendezvous, registration, heartbeats, tasks, model pull, result push."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import threading
import time
from typing import Any, Callable, TypeVar

import numpy as np

from hpcflare import errors
from hpcflare.client.model import FLMetaKey, FLModel, ParamsType
from hpcflare.filters import apply_filters, build_filters
from hpcflare.filters.api import to_numpy
from hpcflare.job import JobConfig, JobDir
from hpcflare.logs.rank_logger import RankLogger
from hpcflare.runtime import staging
from hpcflare.security.jobs import load_kit
from hpcflare.security.tls import explain_refusal, hint_for
from hpcflare.settings import Settings
from hpcflare.transport.codec import TensorSpec, decode_tensor
from hpcflare.transport.grpc_client import GrpcClientTransport

T = TypeVar("T")


@dataclasses.dataclass
class Task:
    name: str
    task_id: str
    round: int
    total_rounds: int
    ref: str
    manifest: list[TensorSpec]
    meta: dict[str, Any]
    staged: dict[str, Any] | None = None


def wait_for_server(job_dir: JobDir, timeout: float) -> str:
    """Read the server's address from the rendezvous file, waiting up to ``timeout`` for it to appear."""
    from hpcflare.runtime.ranks import server_matches

    path = job_dir.rendezvous_dir / "server.json"
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = json.loads(path.read_text())
            if not server_matches(info.get("incarnation")):
                raise KeyError("server.json is from another incarnation of this job")
            return str(info["address"])
        except (FileNotFoundError, ValueError, KeyError):
            if time.monotonic() >= deadline:
                raise errors.PeerGoneError(
                    f"no server address in {path} after settings.rendezvous_timeout={timeout:g}s; "
                    "did the server rank start? (see logs/server.log)") from None
            time.sleep(0.2)


def _once(fn: Callable[[], T]) -> T:
    """Uploads are not idempotent: retry only when nothing reached the server (connection refused)."""
    try:
        return fn()
    except errors.StreamTimeoutError as exc:  # may have been received: let the server's dedup decide
        raise errors.TransportError(str(exc)) from None


def choose_relay(job_dir: JobDir, config: JobConfig, site: str, settings: Settings) -> tuple[str | None, str | None]:
    """A relay on this node if one announced itself here, else relay (index mod R) by fan-out.

    Waits up to settings.rendezvous_timeout for the relay's rendezvous file; (None, None) = go direct.
    """
    from hpcflare.runtime.ranks import server_matches

    names = config.relay_names()
    node = os.environ.get("SLURMD_NODENAME", "")
    deadline = time.monotonic() + settings.rendezvous_timeout
    index = config.clients.index(site)
    while True:
        announced = {}
        for name in names:
            try:
                info = json.loads((job_dir.rendezvous_dir / f"{name}.json").read_text())
            except (FileNotFoundError, ValueError):
                continue
            if server_matches(info.get("incarnation")):
                announced[name] = info
        local = [n for n in names if node and announced.get(n, {}).get("node") == node]
        choice = local[index % len(local)] if local else names[index % len(names)]
        if choice in announced:
            return choice, str(announced[choice]["address"])
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.2)


class ClientAgent:
    def __init__(self, job_dir: JobDir, site: str, log: RankLogger, address: str | None = None) -> None:
        self.job_dir, self.site, self.log = job_dir, site, log
        self.config: JobConfig = job_dir.load_config()
        self.settings: Settings = self.config.load_settings()
        self.kit = load_kit(job_dir, self.config, site)
        self.filters = build_filters(self.config.filters)
        self._global_copy: dict[str, Any] | None = None  # the round's model as received, for DP filters
        self.swarm: Any = None  # SwarmSide in swarm jobs
        for problem in self.kit.self_check() if self.kit else []:
            log.warning("certificate_problem", f"{problem}; the server will refuse this site", problem=problem)
        self.address = address
        self.token = ""
        self.transport: GrpcClientTransport | None = None
        self.ended = False
        self.end_reason = ""
        self._stop = threading.Event()
        self._last_contact = time.monotonic()
        self.pending_logs: list[dict[str, Any]] = []
        self.task_wait_limit = self.settings.registration_timeout + self.settings.round_timeout + self.settings.stream_timeout
        """Longest a site waits for its next task while the server is reachable (covers one whole round)."""
        self.relay_name: str | None = None  # set while connected through a relay
        self._failover_lock = threading.RLock()
        self._discovered = False  # address came from the rendezvous file (so a restarted server can be found)
        self.started = False
        self.on_stuck: Callable[[str, bool], None] | None = None
        """Set by a process launcher: called (reason, server_lost) when the job is over but the training
        script is still running, so a hung script cannot hold its allocation until the time limit."""

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "ClientAgent":
        if self.config.strategy == "swarm" and self.swarm is None and self.site in self.config.clients:
            from hpcflare.runtime.swarm import SwarmSide

            self.swarm = SwarmSide(self)  # this site's peer host: it aggregates when its turn comes
        if self.address is None:
            if self.config.relays and self.site in self.config.clients:
                self.relay_name, self.address = choose_relay(self.job_dir, self.config, self.site, self.settings)
                if self.address is None:
                    self.log.warning("relay_missing", f"no relay announced itself within settings.rendezvous_timeout="
                                     f"{self.settings.rendezvous_timeout:g}s; connecting directly to the server")
            if self.address is None:
                self.address = wait_for_server(self.job_dir, self.settings.rendezvous_timeout)
                self._discovered = True
        self._connect(self.address)
        self.started = True
        threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.site}", daemon=True).start()
        return self

    def _connect(self, address: str) -> None:
        s = self.settings
        peer_name = self.relay_name or (self.kit.server if self.kit else "server")
        transport = GrpcClientTransport(address, s, self.kit, peer_name)

        def register() -> dict:
            try:
                return transport.call("Register", {"site": self.site, "host": socket.gethostname(), "pid": os.getpid(),
                                                   "node": os.environ.get("SLURMD_NODENAME", ""),
                                                   **({"peer": self.swarm.address} if self.swarm else {})},
                                      s.rpc_timeout)
            except errors.PeerGoneError:
                self._check_handshake(address, peer_name)
                raise

        reply = self._retry("Register", register, failover=False)
        # token before transport: a thread that sees the new transport also sees its token (calls read
        # self.transport first, then self.token)
        self.token = reply["token"]
        if self.swarm is not None:
            self.swarm.enrol(str(reply.get("swarm_secret", "")))
        self.address, self.transport = address, transport
        via = f" through {self.relay_name}" if self.relay_name else ""
        self.log.info("registered", f"{self.site} registered with server{via} at {address}", address=address,
                      relay=self.relay_name)

    def _check_handshake(self, address: str, peer_name: str) -> None:
        """An unreachable peer on a TLS job may be one that refuses our certificate: find out, fail clearly."""
        if self.kit is None:
            return
        reason = explain_refusal(address, self.kit, peer_name, timeout=self.settings.rpc_timeout)
        if reason is None:
            return
        message = f"TLS handshake with {peer_name} at {address} failed: {reason}; {hint_for(reason)}"
        self.log.error("tls_refused", message, reason=reason, peer=peer_name)
        raise errors.CertificateError(message)

    def _failover(self, exc: Exception, failed: GrpcClientTransport | None) -> bool:
        """The relay is gone: reconnect straight to the server if the job's policy allows it.

        Called from the main thread and the heartbeat thread alike; True means "retry on self.transport".
        """
        with self._failover_lock:
            if failed is not self.transport:  # the other thread already switched
                return self.transport is not None
            if self.relay_name is None or self.config.relay_failover != "direct":
                if self.relay_name is not None:
                    self.log.error("relay_lost", f"relay {self.relay_name} lost ({exc}); relay_failover='exclude': "
                                   "leaving the job", relay=self.relay_name)
                return False
            lost, self.relay_name = self.relay_name, None
            self.log.warning("relay_lost", f"relay {lost} lost ({exc}); reconnecting directly to the server", relay=lost)
            self._discovered = True
            self._connect(wait_for_server(self.job_dir, self.settings.rendezvous_timeout))
            if failed is not None:
                failed.close()
            return True

    def _rediscover(self, exc: Exception, failed: GrpcClientTransport | None) -> bool:
        """The server is unreachable: if it restarted elsewhere (new rendezvous file), reconnect there."""
        if not self._discovered:
            return False
        with self._failover_lock:
            if failed is not self.transport:
                return self.transport is not None
            try:
                address = wait_for_server(self.job_dir, 0)
            except errors.PeerGoneError:
                return False
            if address == self.address:
                return False
            self.log.warning("server_moved", f"server unreachable ({exc}); it restarted at {address}: reconnecting",
                             address=address)
            self._connect(address)
            if failed is not None:
                failed.close()
            return True

    def _relay_gone(self, exc: Exception) -> bool:
        """After a broken transfer: is the relay itself gone? If so, fail over (True = retry the transfer)."""
        transport = self.transport
        if self.relay_name is None or transport is None:
            return False
        try:
            transport.call("Heartbeat", {"site": self.site, "token": self.token}, self.settings.rpc_timeout)
            return False
        except errors.PeerGoneError as gone:
            return self._failover(gone, transport)
        except errors.HpcflareError:
            return False

    def _stuck_after_end(self) -> None:
        """The server ended the job; give the script settings.end_grace to notice, then stop it."""
        if self.on_stuck is None or self._stop.wait(self.settings.end_grace):
            return
        self.on_stuck(f"the job ended but the training script was still running after settings.end_grace="
                      f"{self.settings.end_grace:g}s", False)

    def heartbeat_extra(self) -> dict[str, Any]:
        """Extra fields for each heartbeat (relays add the children they heard from)."""
        return {}

    def close(self, status: str = "done", reason: str = "") -> None:
        self._stop.set()
        if self.swarm is not None:
            self.swarm.close()
        if self.transport is not None and self.token:
            try:
                self.transport.call("Goodbye", {"site": self.site, "token": self.token, "status": status,
                                                "reason": reason}, self.settings.rpc_timeout)
            except errors.HpcflareError as exc:
                self.log.debug("goodbye_failed", f"could not say goodbye: {exc}")
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _heartbeat_loop(self) -> None:
        s = self.settings
        while not self._stop.wait(s.heartbeat_interval):
            transport = self.transport
            if transport is None:
                return
            try:
                reply = transport.call("Heartbeat", {"site": self.site, "token": self.token, **self.heartbeat_extra()},
                                       s.rpc_timeout)
                self._last_contact = time.monotonic()
                if reply.get("phase") == "ended":
                    self._stuck_after_end()
                    return
            except errors.HpcflareError as exc:
                silent = time.monotonic() - self._last_contact
                self.log.warning("heartbeat_failed", f"heartbeat failed ({silent:.0f}s without server): {exc}")
                if silent > s.server_lost_timeout and self.on_stuck is not None:
                    self.on_stuck(f"server unreachable for {silent:.0f}s (settings.server_lost_timeout="
                                  f"{s.server_lost_timeout:g}s) while the training script was busy", True)
                    return
                if isinstance(exc, errors.PeerGoneError):
                    try:
                        self._failover(exc, transport) or self._rediscover(exc, transport)
                    except errors.HpcflareError as again:
                        self.log.warning("failover_failed", f"reconnecting failed: {again}")

    def _retry(self, what: str, fn: Callable[[], T], failover: bool = True) -> T:
        """Retry transient failures (server not up yet / briefly gone) until settings.server_lost_timeout;
        a dead relay triggers a failover to the server first."""
        deadline = time.monotonic() + self.settings.server_lost_timeout
        attempt = 0
        while True:
            transport = self.transport
            try:
                result = fn()
                self._last_contact = time.monotonic()
                return result
            except (errors.PeerGoneError, errors.StreamTimeoutError) as exc:
                if failover and isinstance(exc, errors.PeerGoneError) and (
                        self._failover(exc, transport) or self._rediscover(exc, transport)):
                    deadline = time.monotonic() + self.settings.server_lost_timeout
                    continue
                if time.monotonic() >= deadline:
                    raise errors.PeerGoneError(f"{what}: server unreachable for settings.server_lost_timeout="
                                               f"{self.settings.server_lost_timeout:g}s: {exc}") from None
                attempt += 1
                time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))

    def _call(self, method: str, request: dict, timeout: float) -> dict:
        return self._retry(method, lambda: self.transport.call(  # type: ignore[union-attr]
            method, {"site": self.site, "token": self.token, **request}, timeout))

    # ---------------------------------------------------------------- tasks
    def next_task(self, timeout: float | None = None, last_task_id: str | None = None) -> Task | None:
        """Block until the server hands out a task; None when the job has ended or ``timeout`` passed."""
        if self.ended:
            return None
        limit = self.task_wait_limit if timeout is None else timeout
        deadline = time.monotonic() + limit
        poll = self.settings.task_poll_timeout
        while True:
            remaining = deadline - time.monotonic()
            reply = self._call("GetTask", {"last_task_id": last_task_id, "timeout": max(0.0, min(poll, remaining))},
                               self.settings.rpc_timeout + poll)
            kind = reply.get("task")
            if kind == "end":
                self.ended, self.end_reason = True, str(reply.get("reason", ""))
                self.log.info("job_ended", f"server ended the job ({self.end_reason})")
                return None
            if kind != "wait":
                manifest = [TensorSpec.from_wire(item) for item in reply.get("manifest", [])]
                staged = reply.get("staged")
                task = Task(str(kind), str(reply["task_id"]), int(reply["round"]), int(reply["total_rounds"]),
                            str(reply["ref"]), manifest, dict(reply.get("meta") or {}),
                            staged if isinstance(staged, dict) else None)
                if self.swarm is not None:
                    self.swarm.on_task(task)
                self.log.info("task_received", f"round {task.round}/{task.total_rounds}: task {task.name} received",
                              round=task.round, task=task.name, task_id=task.task_id)
                return task
            if time.monotonic() >= deadline:
                if timeout is None:
                    raise errors.StreamTimeoutError(f"no task from the server within {limit:g}s "
                                                    "(registration_timeout + round_timeout + stream_timeout)")
                return None

    def fetch(self, task: Task) -> dict[str, Any]:
        """The task's model: memory-mapped from the staging dir when this node sees it, else pulled over gRPC."""
        assert self.transport is not None
        t0 = time.monotonic()
        params = self.swarm.fetch(task) if self.swarm is not None else None
        via = "swarm peer"
        if params is None:
            params = self._from_staging(task) if task.staged else None
            via = "staging"
        if params is None:
            via = "grpc"

            def pull() -> dict[str, Any]:
                transport = self.transport  # read before the token (see _connect)
                request = {"site": self.site, "token": self.token, "ref": task.ref}
                return {spec.name: decode_tensor(blob, spec, self.config.framework)
                        for spec, blob in transport.download(request, task.manifest)}  # type: ignore[union-attr]

            params = self._retry("Download", pull)
        if self.swarm is not None:
            self.swarm.opened(task, params)
        if any(f.needs_global for f in self.filters):
            self._global_copy = {k: np.array(to_numpy(v), copy=True) for k, v in params.items()}
        nbytes = sum(s.nbytes for s in task.manifest)
        self.log.info("model_received", f"round {task.round}: model received via {via} ({nbytes / 1e6:.2f} MB in "
                      f"{time.monotonic() - t0:.2f}s)", round=task.round, bytes=nbytes, via=via,
                      seconds=time.monotonic() - t0)
        return params

    def _from_staging(self, task: Task) -> dict[str, Any] | None:
        root = self.config.staging_root(self.job_dir.root)
        try:
            path = staging.verified(root, task.staged)
            if self.config.framework == "pytorch":
                import safetensors.torch

                params = dict(safetensors.torch.load_file(str(path)))
            else:
                params = staging.map_tensors(path)
            if sorted(params) != sorted(s.name for s in task.manifest):
                raise errors.MalformedMessageError("staged model does not match the task's manifest")
            return params
        except (OSError, errors.HpcflareError) as exc:
            self.log.info("staging_fallback", f"staged model not usable here ({exc}); falling back to gRPC streaming",
                          round=task.round, reason=str(exc))
            return None

    def _stage_result(self, task: Task, params: dict[str, Any]) -> dict[str, Any] | None:
        """Leave the result on the shared filesystem; None (stream it instead) if this node cannot write there."""
        root = self.config.staging_root(self.job_dir.root)
        name = f"results/{task.ref}/{self.site}.safetensors"
        try:
            if not (root / "results").is_dir():
                return None
            return {"file": name, **staging.write_atomic(staging.confined(root, name), params)}
        except OSError as exc:
            self.log.info("staging_fallback", f"cannot stage result ({exc}); streaming it over gRPC", round=task.round)
            return None

    def to_flmodel(self, task: Task, params: dict[str, Any]) -> FLModel:
        meta = {**task.meta, FLMetaKey.JOB_ID: self.config.job_id, FLMetaKey.SITE_NAME: self.site,
                FLMetaKey.CURRENT_ROUND: task.round, FLMetaKey.TOTAL_ROUNDS: task.total_rounds}
        return FLModel(params_type=ParamsType.FULL, params=params, current_round=task.round,
                       total_rounds=task.total_rounds, meta=meta)

    def send(self, task: Task, model: FLModel) -> None:
        assert self.transport is not None
        if model.params is None and task.name != "train":
            model.params = {}  # an evaluation result: metrics only
        if not isinstance(model.params, dict) or (not model.params and task.name == "train"):
            raise ValueError("FLModel.params must be a non-empty dict of numpy arrays or torch tensors")
        header = {"site": self.site, "token": self.token, "task_id": task.task_id, "round": task.round,
                  "params_type": (model.params_type or ParamsType.FULL).value,
                  "meta": {k: v for k, v in (model.meta or {}).items() if isinstance(k, str)},
                  "metrics": model.metrics or {}, "logged": self.pending_logs}
        t0 = time.monotonic()
        params = model.params
        if self.filters:  # privacy / bandwidth filters on what leaves the site
            out = apply_filters(self.filters, params, header["params_type"], self._global_copy,
                                quantize=not task.staged)
            params, header["params_type"] = out.params, out.params_type
            if out.quant:
                header["quant"] = out.quant
        staged = self._stage_result(task, params) if task.staged else None
        if staged is not None:
            header.pop("quant", None)
            header["staged"] = staged
        wire_bytes = 0 if staged else sum(int(getattr(v, "nbytes", 0)) for v in params.values())

        def push() -> dict:
            if self.swarm is not None and task.meta.get("swarm"):
                self.swarm.send(task, header, params)  # to this round's aggregating site
                return {}
            return self.transport.upload({**header, "token": self.token},  # type: ignore[union-attr]
                                         [] if staged else params.items())

        try:
            try:
                self._retry("Upload", lambda: _once(push), failover=True)
            except errors.TransportError as exc:  # a relay dying mid-stream breaks it in several ways
                if not self._relay_gone(exc):
                    raise
                self._retry("Upload", lambda: _once(push), failover=True)
        except errors.StaleTaskError as exc:
            self.log.warning("result_late", f"round {task.round}: result discarded, the round had closed: {exc}",
                             round=task.round)
            return
        except errors.UpdateRejectedError as exc:
            self.log.error("result_rejected", f"round {task.round}: server rejected the update: {exc}", round=task.round)
            raise
        self.pending_logs = []
        via = "staging" if staged else "grpc"
        took = time.monotonic() - t0
        self.log.info("result_sent", f"round {task.round}: result sent via {via} ({header['params_type']}) in "
                      f"{took:.2f}s ({wire_bytes / 1e6:.2f} MB of tensors)", round=task.round, metrics=header["metrics"], via=via,
                      seconds=took, bytes=wire_bytes, quant=sorted({q["mode"] for q in header.get("quant", {}).values()}))
