"""The server rank: registration, rounds, in-time aggregation, the result model.

A round is dispatched to every live client; it closes when every live client has answered (accepted or
rejected), or at ``round_timeout`` if at least ``min_clients`` results were accepted. Results for a closed
round are discarded and logged, never mixed into a later one.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock

from hpcflare import errors
from hpcflare.client.model import MetaKey
from hpcflare.exitcodes import ExitCode
from hpcflare.job import JobConfig, JobDir, atomic_write_text
from hpcflare.logs.rank_logger import RankLogger
from hpcflare.runtime.global_model import GlobalModel, load_params
from hpcflare.runtime.membership import Membership
from hpcflare.runtime.ranks import incarnation
from hpcflare.runtime.staging import Stager, sha256_file
from hpcflare.runtime.upload import read_staged, read_upload
from hpcflare.settings import Settings
from hpcflare.strategy import ClientUpdate, FedAvg, Strategy
from hpcflare.transport.api import ServerHandler
from hpcflare.transport.grpc_server import GrpcServer

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


class _Round:
    def __init__(self, number: int, strategy: Strategy, model: GlobalModel) -> None:
        self.number = number
        self.task_id = uuid.uuid4().hex[:12]
        self.aggregator = strategy.new_aggregator(model.params)
        self.accepted: dict[str, dict[str, Any]] = {}  # site -> metrics
        self.rejected: dict[str, str] = {}  # site -> reason
        self.open = True
        self.started = time.monotonic()

    def answered(self) -> set[str]:
        return set(self.accepted) | set(self.rejected)


class FLServer(ServerHandler):
    def __init__(self, job_dir: JobDir, log: RankLogger, host: str = "127.0.0.1", port: int = 0,
                 advertise: str | None = None) -> None:
        self.job_dir = job_dir
        self.config: JobConfig = job_dir.load_config()
        self.settings: Settings = self.config.load_settings()
        self.log = log
        self.strategy = STRATEGIES[self.config.strategy]()
        self.members = Membership(self.config.clients, self.settings.heartbeat_timeout)
        self.first_round = 1
        self.model = self._load_checkpoint() or GlobalModel(load_params(job_dir.root / self.config.initial_model), 0)
        self.round: _Round | None = None
        self.phase = "registration"  # registration | running | ended
        self.end_reason = ""
        self._cv = threading.Condition()
        self._agg_lock = threading.Lock()
        self._upload_slots = threading.BoundedSemaphore(self.settings.max_concurrent_uploads)
        self._goodbyes: set[str] = set()
        self.stager = Stager(self.config.staging_root(job_dir.root)) if self.config.staging else None
        self.staged: dict[str, Any] | None = None
        self.bytes_sent = 0
        self.grpc = GrpcServer(self, self.settings, log, host=host, port=port)
        self.address = f"{advertise or host}:{self.grpc.port}"

    # ------------------------------------------------------------------ checkpoints
    @property
    def _ckpt_meta(self) -> Path:
        return self.job_dir.models_dir / "checkpoint.json"

    def _load_checkpoint(self) -> GlobalModel | None:
        """Resume after a requeue/restart: the last completed round's model, verified by checksum."""
        if not self._ckpt_meta.is_file():
            return None
        meta = json.loads(self._ckpt_meta.read_text())
        path = self.job_dir.models_dir / meta["file"]
        if not path.is_file() or sha256_file(path) != meta["sha256"]:
            self.log.warning("checkpoint_invalid", f"checkpoint {path} missing or corrupt; starting from the initial model")
            return None
        self.first_round = int(meta["round"]) + 1
        self.log.info("resumed", f"resuming from checkpoint: round {meta['round']} completed, continuing with round "
                      f"{self.first_round}", round=int(meta["round"]))
        return GlobalModel(load_params(path), int(meta["round"]))

    def _save_checkpoint(self, number: int) -> None:
        path = self.job_dir.models_dir / "checkpoint.safetensors"
        self.model.save(path)
        atomic_write_text(self._ckpt_meta, json.dumps({"round": number, "file": path.name, "sha256": sha256_file(path),
                                                       "time": time.time()}))

    # ------------------------------------------------------------------ transport handlers
    def handle_unary(self, method: str, request: dict, peer: str) -> dict:
        if method == "Register":
            return self._register(request)
        record = self.members.check(request.get("site"), request.get("token"))
        if method == "Heartbeat":
            return {"phase": self.phase}
        if method == "GetTask":
            return self._get_task(record.site, request)
        if method == "Goodbye":
            status, reason = str(request.get("status", "done")), str(request.get("reason", ""))[:2000]
            with self._cv:
                self._goodbyes.add(record.site)
                self.members.mark(record.site, "done" if status == "done" else "failed", reason)
                self._cv.notify_all()
            if status != "done":
                self.log.warning("client_failed", f"{record.site} failed: {reason}", site=record.site, reason=reason)
            else:
                self.log.info("client_done", f"{record.site} finished", site=record.site)
            return {}
        raise errors.MalformedMessageError(f"unknown method {method!r}")

    def _register(self, request: dict) -> dict:
        site = request.get("site")
        if not isinstance(site, str):
            raise errors.MalformedMessageError("Register needs a 'site' string")
        record, old = self.members.register(site, str(request.get("host", ""))[:256], int(request.get("pid", 0) or 0))
        if old is not None:
            self.log.warning("client_reregistered", f"{site} registered again (was {old.state}); previous instance replaced", site=site)
        node = str(request.get("node") or "")[:128]
        self.log.info("client_registered", f"{site} registered from {record.host or '?'}{'/' + node if node else ''} "
                      f"pid {record.pid}", site=site, host=record.host, node=node, pid=record.pid)
        with self._cv:
            self._cv.notify_all()
        return {"token": record.token, "job_id": self.config.job_id, "num_rounds": self.config.num_rounds,
                "framework": self.config.framework}

    def _get_task(self, site: str, request: dict) -> dict:
        wait = min(float(request.get("timeout") or self.settings.task_poll_timeout), self.settings.task_poll_timeout)
        last = request.get("last_task_id")
        deadline = time.monotonic() + wait
        with self._cv:
            while True:
                if self.phase == "ended":
                    return {"task": "end", "reason": self.end_reason}
                rnd = self.round
                if rnd is not None and rnd.open and rnd.task_id != last and site not in rnd.answered():
                    self.members.mark(site, "active")
                    return {"task": "train", "task_id": rnd.task_id, "round": rnd.number,
                            "total_rounds": self.config.num_rounds, "ref": self.model.ref,
                            "manifest": [s.to_wire() for s in self.model.specs],
                            "meta": self.strategy.configure_round(rnd.number, self.config.num_rounds),
                            "staged": self.staged}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return {"task": "wait"}
                self._cv.wait(remaining)

    def handle_download(self, request: dict, peer: str) -> Iterator[bytes]:
        self.members.check(request.get("site"), request.get("token"))
        model = self.model
        if request.get("ref") != model.ref:
            raise errors.StaleTaskError(f"model {request.get('ref')!r:.40} is no longer current (now {model.ref})")
        start = request.get("start", [0, 0])
        if not (isinstance(start, list) and len(start) == 2 and all(isinstance(x, int) for x in start)):
            raise errors.MalformedMessageError(f"invalid download start {start!r:.60}")
        return self._counted(model.frames((start[0], start[1]), self.settings.chunk_size))

    def _counted(self, frames: Iterator[bytes]) -> Iterator[bytes]:
        for frame in frames:
            self.bytes_sent += len(frame)
            yield frame

    def handle_upload(self, frames: Iterator[bytes], peer: str) -> dict:
        slot = False
        site = "?"

        def on_header(header: dict) -> _Round:
            nonlocal slot, site
            record = self.members.check(header.get("site"), header.get("token"))
            site = record.site
            rnd = self.round
            if rnd is None or not rnd.open or header.get("task_id") != rnd.task_id:
                raise errors.StaleTaskError(f"result from {site} for task {header.get('task_id')!r:.40} arrived after its round closed; discarded")
            if site in rnd.answered():
                raise errors.StaleTaskError(f"{site} already answered round {rnd.number}")
            if not self._upload_slots.acquire(timeout=self.settings.upload_slot_timeout):
                raise errors.StreamTimeoutError(f"no upload slot free within settings.upload_slot_timeout={self.settings.upload_slot_timeout}s")
            slot = True
            return rnd

        try:
            header, rnd, params = read_upload(frames, self.settings, self.model.params, on_header)
            staged_path = None
            if header.get("staged") is not None:
                if self.stager is None or params:
                    raise errors.MalformedMessageError("staged result sent to a job without staging, or mixed with tensors")
                staged_path, specs = self.stager.read_result(header["staged"], self.settings.max_model_bytes)
                if not staged_path.is_relative_to(self.stager.root.resolve() / "results" / self.model.ref):
                    raise errors.MalformedMessageError(f"staged result {header['staged'].get('file')!r:.80} is not under results/{self.model.ref}/")
                params = read_staged(staged_path, specs, self.model.params)
            weight = self._weight(header.get("meta"))
            update = ClientUpdate(site, params, header["params_type"], weight,
                                  _dict(header.get("metrics")), _dict(header.get("meta")))
            with self._agg_lock:
                if not rnd.open or rnd is not self.round:
                    raise errors.StaleTaskError(f"result from {site} arrived after round {rnd.number} closed; discarded")
                rnd.aggregator.add(update)
                with self._cv:
                    rnd.accepted[site] = update.metrics
            del update, params
            if staged_path is not None:
                staged_path.unlink(missing_ok=True)
            self.log.info("result_accepted", f"round {rnd.number}: result from {site} accepted (weight {weight:g})",
                          site=site, round=rnd.number, weight=weight, metrics=header.get("metrics"))
            with self._cv:
                self._cv.notify_all()
            return {"accepted": True}
        except errors.StaleTaskError as exc:
            self.log.warning("late_result", str(exc), site=site)
            raise
        except (errors.UpdateRejectedError, errors.MalformedMessageError, errors.FrameTooLargeError) as exc:
            rnd = self.round
            if rnd is not None and site in self.members.live():
                with self._cv:
                    rnd.rejected.setdefault(site, str(exc))
                    self._cv.notify_all()
            self.log.warning("result_rejected", f"result from {site} rejected: {exc}", site=site, reason=str(exc),
                             round=rnd.number if rnd else None)
            raise
        finally:
            if slot:
                self._upload_slots.release()

    def _weight(self, meta: Any) -> float:
        raw = _dict(meta).get(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        try:
            weight = float(raw)
        except (TypeError, ValueError):
            raise errors.UpdateRejectedError(f"meta NUM_STEPS_CURRENT_ROUND must be a number, got {raw!r:.40}") from None
        if not math.isfinite(weight) or weight < 0:
            raise errors.UpdateRejectedError(f"meta NUM_STEPS_CURRENT_ROUND must be finite and >= 0, got {raw!r:.40}")
        return weight

    # ------------------------------------------------------------------ orchestration
    def _status(self, state: str, **fields: Any) -> None:
        rnd = self.round.number if self.round else 0
        self.job_dir.write_status(state, job_id=self.config.job_id, round=rnd, num_rounds=self.config.num_rounds,
                                  **fields)

    def run(self, on_listening: Callable[[str], None] | None = None) -> ExitCode:
        cfg, s = self.config, self.settings
        self.grpc.start()
        with FileLock(str(self.job_dir.rendezvous_dir / "server.lock"), timeout=s.rendezvous_timeout):
            atomic_write_text(self.job_dir.rendezvous_dir / "server.json", json.dumps(
                {"address": self.address, "job_id": cfg.job_id, "pid": os.getpid(), "host": socket.gethostname(),
                 "incarnation": incarnation(), "started": time.time()}))
        if on_listening is not None:
            on_listening(self.address)
        self.log.info("server_started", f"job {cfg.job_id}: server listening on {self.address}, "
                      f"{len(cfg.clients)} clients expected (min {cfg.min_clients}), {cfg.num_rounds} rounds",
                      address=self.address, clients=cfg.clients, min_clients=cfg.min_clients,
                      incarnation=incarnation(), node=os.environ.get("SLURMD_NODENAME", ""))
        self._status("registration")
        try:
            self._await_registration()
            self.phase = "running"
            for number in range(self.first_round, cfg.num_rounds + 1):
                self._run_round(number)
                self._save_checkpoint(number)
            self.model.save(self.job_dir.result_model_path)
            self._end("completed")
            self.log.info("job_completed", f"job {cfg.job_id} completed: {cfg.num_rounds} rounds; "
                          f"result model written to {self.job_dir.result_model_path}",
                          result_model=str(self.job_dir.result_model_path))
            self._status("completed", result_model=str(self.job_dir.result_model_path))
            return ExitCode.OK
        except errors.RegistrationTimeoutError as exc:
            return self._fail(exc, ExitCode.REGISTRATION_TIMEOUT)
        except errors.RoundFailedError as exc:
            return self._fail(exc, ExitCode.ROUND_FAILED)
        except errors.JobAbortedError as exc:
            return self._fail(exc, ExitCode.ABORTED, state="aborted")
        finally:
            self._drain(s.end_grace)
            self.grpc.stop()

    def abort(self, reason: str) -> None:
        with self._cv:
            self.end_reason = f"aborted: {reason}"
            self.phase = "aborting"
            self._cv.notify_all()

    def _fail(self, exc: Exception, code: ExitCode, state: str = "failed") -> ExitCode:
        self.log.error("job_failed", f"job {self.config.job_id} {state}: {exc}", exit_code=int(code), reason=str(exc))
        self._end(f"{state}: {exc}")
        self._status(state, message=str(exc), exit_code=int(code))
        return code

    def _end(self, reason: str) -> None:
        with self._cv:
            self.phase, self.end_reason = "ended", reason
            self._cv.notify_all()

    def _check_abort(self) -> None:
        if self.phase == "aborting":
            raise errors.JobAbortedError(self.end_reason)

    def _await_registration(self) -> None:
        cfg, timeout = self.config, self.settings.registration_timeout
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.members.registered()) < len(cfg.clients):
                self._check_abort()
                if time.monotonic() >= deadline:
                    break
                self._cv.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        registered = self.members.registered()
        missing = sorted(set(cfg.clients) - set(registered))
        if len(registered) < cfg.min_clients:
            raise errors.RegistrationTimeoutError(
                f"only {len(registered)} of {len(cfg.clients)} clients registered within settings.registration_timeout="
                f"{timeout:g}s (min_clients={cfg.min_clients}); never registered: {missing[:20]}")
        if missing:
            self.log.warning("clients_missing", f"starting without {len(missing)} client(s) that did not register within "
                             f"{timeout:g}s: {missing[:20]}", missing=missing)
        self.log.info("registration_done", f"{len(registered)} clients registered", clients=registered)

    def _run_round(self, number: int) -> None:
        cfg, s = self.config, self.settings
        if self.stager is not None:
            t0 = time.monotonic()
            self.staged = self.stager.publish(self.model.ref, self.model.params)
            self.log.info("model_staged", f"round {number}: global model staged ({self.staged['nbytes'] / 1e6:.1f} MB) "
                          f"in {time.monotonic() - t0:.2f}s", round=number, **self.staged)
        sent_before = self.bytes_sent
        with self._cv:
            self.round = rnd = _Round(number, self.strategy, self.model)
            self._cv.notify_all()
        self._status("running")
        live = self.members.live()
        self.log.info("round_started", f"round {number}/{cfg.num_rounds} started: task {rnd.task_id} for {len(live)} clients",
                      round=number, task_id=rnd.task_id, clients=live)
        deadline = rnd.started + s.round_timeout
        with self._cv:
            while True:
                self._check_abort()
                for record in self.members.expire():
                    self.log.warning("client_dead", f"{record.site} declared dead: {record.reason}", site=record.site,
                                     round=number)
                live = set(self.members.live())
                answered = rnd.answered()
                if live <= answered and len(rnd.accepted) >= cfg.min_clients:
                    break
                if len(rnd.accepted) + len(live - answered) < cfg.min_clients:
                    raise errors.RoundFailedError(
                        f"round {number}: only {len(rnd.accepted)} accepted result(s) and {len(live - answered)} client(s) "
                        f"still working, fewer than min_clients={cfg.min_clients}; rejected: {rnd.rejected or '-'}; "
                        f"lost: {self._lost()}")
                if time.monotonic() >= deadline:
                    if len(rnd.accepted) >= cfg.min_clients:
                        stragglers = sorted(live - answered)
                        self.log.warning("stragglers", f"round {number}: closing at settings.round_timeout={s.round_timeout:g}s "
                                         f"without {stragglers}", round=number, stragglers=stragglers)
                        break
                    raise errors.RoundFailedError(
                        f"round {number}: {len(rnd.accepted)} accepted result(s) by settings.round_timeout={s.round_timeout:g}s, "
                        f"fewer than min_clients={cfg.min_clients}; still waiting for {sorted(live - answered)}")
                self._cv.wait(0.5)
            rnd.open = False
        with self._agg_lock:  # waits for a fold in progress, then no more can start
            t0 = time.monotonic()
            self.model = GlobalModel(rnd.aggregator.result(), number)
        self.log.info("round_completed", f"round {number}/{cfg.num_rounds} completed: {len(rnd.accepted)} results "
                      f"aggregated in {time.monotonic() - t0:.2f}s (round took {time.monotonic() - rnd.started:.1f}s)"
                      + (f"; metrics {_summarize(rnd.accepted)}" if _summarize(rnd.accepted) else ""),
                      round=number, accepted=sorted(rnd.accepted), rejected=rnd.rejected,
                      metrics=rnd.accepted, seconds=time.monotonic() - rnd.started,
                      bytes_sent=self.bytes_sent - sent_before)

    def _lost(self) -> dict[str, str]:
        return {r.site: f"{r.state}: {r.reason}"[:200] for r in self.members.records() if r.state in ("dead", "failed")}

    def _drain(self, grace: float) -> None:
        """Give live clients up to ``grace`` seconds to collect the end task and say goodbye."""
        deadline = time.monotonic() + grace
        with self._cv:
            while set(self.members.live()) - self._goodbyes and time.monotonic() < deadline:
                self._cv.wait(0.2)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summarize(metrics: dict[str, dict[str, Any]]) -> str:
    keys = sorted({k for m in metrics.values() for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    parts = []
    for key in keys[:5]:
        values = [m[key] for m in metrics.values() if isinstance(m.get(key), (int, float))]
        parts.append(f"{key}={sum(values) / len(values):.4g}")
    return ", ".join(parts)
