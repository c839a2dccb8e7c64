"""The server rank: registration, rounds, in-time aggregation, checkpoints, the result model.

A round is dispatched to every live client (directly or through relays); it closes when every live client
has answered (accepted or rejected), or at ``round_timeout`` if at least ``min_clients`` results were
accepted. Results for a closed round are discarded and logged, never mixed into a later one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

from hpcflare import errors
from hpcflare.exitcodes import ExitCode, exit_for, format_traceback, needs_traceback
from hpcflare.job import JobDir, JobState
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.memory import release_memory
from hpcflare.runtime.cluster.rendezvous import SERVER, FileRendezvous, Rendezvous, incarnation
from hpcflare.runtime.cluster.staging import Stager
from hpcflare.runtime.host.checkpoints import Checkpoints
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.membership import Membership, MemberState
from hpcflare.runtime.host.round import INITIAL_METRICS
from hpcflare.runtime.host.round_host import HostPhase, RoundHost
from hpcflare.runtime.host.selection import ModelSelector
from hpcflare.runtime.host.tracking import Tracker
from hpcflare.runtime.registration import ServerRegistration
from hpcflare.security.jobs import load_kit
from hpcflare.strategy.api import ServerContext, TaskKind
from hpcflare.tensors import all_finite
from hpcflare.transport.codec import is_float
from hpcflare.transport.grpc_server import GrpcServer
from hpcflare.transport.inproc import publish_local, withdraw_local
from hpcflare.transport.model_files import load_params


class FLServer(ServerRegistration, RoundHost):
    role = "server"

    def __init__(
        self,
        job_dir: JobDir,
        log: RankLogger,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
    ) -> None:
        config = job_dir.load_config()
        settings = config.load_settings()
        self.relays = config.relay_names()
        ranks = config.rank_hosts()
        stager = Stager(config.staging_root(job_dir.root)) if config.staging else None
        super().__init__(
            config,
            settings,
            log,
            config.new_strategy(),
            Membership(config.clients + self.relays + list(ranks), settings.heartbeat_timeout),
            stager,
        )
        self.hosts = {
            **{relay: None for relay in self.relays},
            **{rank: set(sites) for rank, sites in ranks.items()},
        }
        self.job_dir = job_dir
        job_dir.ensure_secret()  # hand-written launches that skipped Env.deploy / prepare_job get one too
        self.strategy.attach(job_dir.root)
        direct = len(self.relays) or len(ranks) or len(config.clients)  # links that end at this server
        self.checkpoints = Checkpoints(job_dir.models_dir, log, settings.model_file_bytes)
        self.first_round = 1
        self.last_metrics: dict[str, float] = {}
        self.model = self._resume() or self._new_model(
            self.strategy.initial_params(load_params(job_dir.root / config.initial_model, mapped=True)), 0
        )
        for warning in settings.warnings() + settings.fit_warnings(
            len(config.clients), direct, self.model.nbytes
        ):
            log.warning("settings_conflict", warning)
        self.tracker = Tracker(
            job_dir.root / "tracking", config.tracking, config.name, config.tracking_config
        )
        self.selector = ModelSelector(
            job_dir.models_dir,
            config.key_metric,
            config.key_metric_mode,
            config.early_stop_patience,
            job_dir.root / config.initial_model,
            log,
            self.checkpoints.latest,
            config.stop_condition,
        )
        kit = load_kit(job_dir, config, "server", role="server")
        self.grpc = GrpcServer(self, settings, log, host=host, port=port, kit=kit, children=direct)
        if kit is not None:
            for problem in kit.self_check():
                log.warning(
                    "certificate_problem", f"{problem}; clients will refuse this server", problem=problem
                )
        self.address = f"{advertise or host}:{self.grpc.port}"

    def on_track(self, site: str, records: list) -> None:
        if site in self.hosts:
            raise errors.MalformedMessageError(
                "relays and client ranks forward tracking records in their sites' names"
            )
        skipped = self.tracker.record_steps(site, records)
        if skipped:
            self.log.warning(
                "tracking_malformed",
                f"{site}: {skipped} of {len(records)} tracking record(s) were malformed and skipped",
                site=site,
                skipped=skipped,
            )

    def _resume(self) -> GlobalModel | None:
        """After a requeue/restart: the last completed round's model and the strategy's state."""
        found = self.checkpoints.load()
        if found is None:
            return None
        model, number, state = found
        if state is not None:
            self.strategy.load_state_dict(state)
        self.first_round = number + 1
        self.log.info(
            "resumed",
            f"resuming from checkpoint: round {number} completed, continuing with round {self.first_round}",
            round=number,
        )
        return model

    # ------------------------------------------------------------------ orchestration
    def _status(self, state: JobState, **fields: Any) -> None:
        rnd = self.round.number if self.round else self.first_round - 1
        self.job_dir.write_status(
            state, job_id=self.config.job_id, round=rnd, num_rounds=self.config.num_rounds, **fields
        )

    def run(self, rendezvous: Rendezvous | None = None) -> ExitCode:
        """Publish the address (job dir, and ``rendezvous`` too), run every round, write the result."""
        cfg, s = self.config, self.settings
        self.grpc.start()
        publish_local(self.address, self)  # a client rank in this process (SimEnv) skips loopback gRPC
        self.watch_stalls()
        for where in [FileRendezvous(self.job_dir.rendezvous_dir, s.rendezvous_timeout), rendezvous]:
            if where is not None:
                where.publish(
                    SERVER,
                    self.address,
                    incarnation(),
                    job_id=cfg.job_id,
                    node=os.environ.get("SLURMD_NODENAME", ""),
                )
        kit = self.grpc.kit
        security = f"mutual TLS, project {kit.project}" if kit else "plain text"
        self.log.info(
            "server_started",
            f"job {cfg.job_id}: server listening on {self.address} ({security}), "
            f"{len(cfg.clients)} clients expected (min {cfg.min_clients}), {len(self.relays)} relays, "
            f"{cfg.num_rounds} rounds",
            address=self.address,
            clients=cfg.clients,
            relays=self.relays,
            min_clients=cfg.min_clients,
            incarnation=incarnation(),
            node=os.environ.get("SLURMD_NODENAME", ""),
            tls=kit is not None,
        )
        self._status(JobState.REGISTRATION)
        try:
            self.strategy.start_services(
                ServerContext(
                    self.job_dir.root,
                    self.address.rsplit(":", 1)[0],
                    kit.path if kit else None,
                    self.log,
                    self.live_children,
                )
            )
            self._await_registration()
            self.phase = HostPhase.RUNNING
            rounds = self.first_round - 1
            for number in range(self.first_round, cfg.num_rounds + 1):
                self._run_round(number)
                self.checkpoints.save(self.model, number, self.strategy.state_dict())
                rounds = number
                release_memory()
                why = self.selector.stop_reason()
                if why:
                    self.log.info(
                        "early_stopped", f"round {number}: {why}; ending the job early", round=number
                    )
                    break
            self.checkpoints.publish_result(self.model, self.job_dir.result_model_path)
            self.end("completed")
            self.log.info(
                "job_completed",
                f"job {cfg.job_id} completed: {rounds} rounds; "
                f"result model written to {self.job_dir.result_model_path}",
                result_model=str(self.job_dir.result_model_path),
            )
            self._status(JobState.COMPLETED, result_model=str(self.job_dir.result_model_path))
            return ExitCode.OK
        except Exception as exc:  # noqa: BLE001 - every end is recorded in status.json with its cause
            code, reason = exit_for(exc)
            if needs_traceback(code):
                self.log.error("traceback", format_traceback(exc))
            return self._fail(
                reason, code, state=JobState.ABORTED if code == ExitCode.ABORTED else JobState.FAILED
            )
        finally:
            self.strategy.stop_services()
            self.tracker.close()
            try:
                self.checkpoints.wait()  # never leave a checkpoint half-written behind the job's end
            except Exception:  # noqa: BLE001 - already logged as checkpoint_failed
                pass
            self.drain(s.end_grace)
            withdraw_local(self.address)
            self.grpc.stop()

    def abort(self, reason: str) -> None:
        with self._cv:
            self.end_reason = f"aborted: {reason}"
            self.phase = HostPhase.ABORTING
            self._cv.notify_all()

    def _fail(self, reason: str, code: ExitCode, state: JobState = JobState.FAILED) -> ExitCode:
        self.log.error(
            "job_failed", f"job {self.config.job_id} {state}: {reason}", exit_code=int(code), reason=reason
        )
        self.end(f"{state}: {reason}")
        self._status(state, message=reason, exit_code=int(code))
        return code

    def _check_abort(self) -> None:
        if self.phase == HostPhase.ABORTING:
            raise errors.JobAbortedError(self.end_reason)

    def _run_round(self, number: int) -> None:
        cfg, s = self.config, self.settings
        sent_before = self.bytes_sent
        alive = self.live_children()
        live = [c for c in cfg.clients if c in alive]
        plan = self.strategy.plan_round(number, cfg.num_rounds, live)
        if self.last_metrics:
            plan.meta.setdefault(INITIAL_METRICS, self.last_metrics)
        if plan.skip:
            self.log.info("round_skipped", f"round {number}/{cfg.num_rounds}: nothing to do", round=number)
            return
        kept = self.model  # evaluation rounds may serve another model; the global one stays
        model = kept if plan.model is None else self._new_model(plan.model, number)
        rnd = self.open_round(number, model, plan=plan)
        self._status(JobState.RUNNING)
        if plan.targets is not None:
            live = [c for c in live if c in plan.targets]
        need = max(cfg.min_clients, math.ceil(cfg.min_fraction * len(live)))
        if plan.targets is not None:
            need = min(need, max(1, len(live)))
        self.log.info(
            "round_started",
            f"round {number}/{cfg.num_rounds} started: task {rnd.task_id} ({plan.task}) "
            f"for {len(live)} clients",
            round=number,
            task_id=rnd.task_id,
            clients=live,
            task=plan.task,
        )
        deadline = rnd.started + s.round_timeout
        restart = False
        with self._cv:
            while True:
                self._check_abort()
                self.expire_dead(number)
                everyone = self.live_children()
                live_set = everyone & set(plan.targets) if plan.targets is not None else everyone
                answered = rnd.answered()
                if plan.coordinator and plan.coordinator not in everyone and plan.coordinator not in answered:
                    self.log.warning(
                        "round_restarted",
                        f"round {number}: {plan.coordinator}, which coordinates it, is "
                        "gone; restarting the round without it",
                        round=number,
                        lost=plan.coordinator,
                    )
                    restart = True
                    break
                if live_set <= answered and len(rnd.accepted) >= need:
                    break
                if len(rnd.accepted) + len(live_set - answered) < need:
                    raise errors.RoundFailedError(
                        f"round {number}: only {len(rnd.accepted)} accepted result(s) and {len(live_set - answered)} "
                        f"client(s) still working, fewer than {_need(cfg.min_clients, cfg.min_fraction, need)}; "
                        f"rejected: {rnd.rejected or '-'}; lost: {self._lost()}"
                    )
                if time.monotonic() >= deadline:
                    if len(rnd.accepted) >= need:
                        stragglers = sorted(live_set - answered)
                        self.log.warning(
                            "stragglers",
                            f"round {number}: closing at settings.round_timeout={s.round_timeout:g}s "
                            f"without {stragglers}",
                            round=number,
                            stragglers=stragglers,
                        )
                        break
                    raise errors.RoundFailedError(
                        f"round {number}: {len(rnd.accepted)} accepted result(s) by settings.round_timeout={s.round_timeout:g}s, "
                        f"fewer than {_need(cfg.min_clients, cfg.min_fraction, need)}; still waiting for "
                        f"{sorted(live_set - answered)}"
                    )
                self._cv.wait(0.5)
        self.close_round(rnd)
        if restart:
            self.model = kept
            return self._run_round(number)
        t0 = time.monotonic()
        if plan.task == TaskKind.TRAIN and plan.aggregate:
            self.model = self._new_model(
                _replacing(rnd.model, _finite(rnd.aggregator.result_items(), number)),
                number,
                nbytes=rnd.model.nbytes,
            )
        else:
            self.model = kept
        self.strategy.round_closed(number, plan, rnd.accepted)
        rnd.aggregator = None  # type: ignore[assignment]
        summary = _summarize(rnd.accepted)
        self.log.info(
            "round_completed",
            f"round {number}/{cfg.num_rounds} completed: {len(rnd.accepted)} results "
            f"aggregated in {time.monotonic() - t0:.2f}s (round took {time.monotonic() - rnd.started:.1f}s)"
            + (f"; metrics {summary}" if summary else ""),
            round=number,
            accepted=sorted(rnd.accepted),
            rejected=rnd.rejected,
            metrics=rnd.accepted,
            seconds=time.monotonic() - rnd.started,
            bytes_sent=self.bytes_sent - sent_before,
        )
        means = self.tracker.record_round(number, rnd.accepted, rnd.weights)
        self.selector.observe(number, means)
        if plan.task == TaskKind.TRAIN and means:
            self.last_metrics = means  # sent with the next round's task (FLModel.metrics, as in NVFlare)

    def _new_model(self, params: Any, number: int, nbytes: int | None = None) -> GlobalModel:
        """The round's model, in a spool file when it is at least settings.model_file_bytes (``nbytes``: its
        size when ``params`` is a lazy iterable)."""
        if nbytes is None:
            nbytes = sum(value.nbytes for value in params.values())
        return GlobalModel(params, number, in_file=nbytes >= self.settings.model_file_bytes)

    def _lost(self) -> dict[str, str]:
        return {
            r.site: f"{r.state}: {r.reason}"[:200]
            for r in self.members.records()
            if r.state in (MemberState.DEAD, MemberState.FAILED)
        }


def _replacing(old: GlobalModel, items: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Yield the new tensors, dropping each old one once its successor is encoded (the round is closed,
    so nobody downloads the old model any more): peak memory ~2x the model instead of 3x."""
    for name, value in items:
        yield name, value
        old.blobs.pop(name, None)
        old.params.pop(name, None)
        old.release(name)


def _finite(items: Iterator[tuple[str, Any]], number: int) -> Iterator[tuple[str, Any]]:
    """The new model's tensors, checked before anything is published or checkpointed: a NaN/Inf aggregate
    fails the round (the last checkpoint stays the last good model) instead of poisoning every later round."""
    for name, value in items:
        if is_float(value.dtype) and not all_finite(value):
            raise errors.RoundFailedError(
                f"round {number}: the aggregate of tensor {name!r} is not finite (NaN/Inf): the accepted updates "
                f"overflowed {value.dtype}; nothing of round {number} was published or checkpointed (see the weights "
                f"and sites in this round's result_accepted events; resume from round {number - 1}'s checkpoint)"
            )
        yield name, value


def _need(min_clients: int, min_fraction: float, need: int) -> str:
    if need == min_clients:
        return f"min_clients={min_clients}"
    return f"{need} (min_fraction={min_fraction:g} of the round's clients; min_clients={min_clients})"


def _summarize(metrics: dict[str, dict[str, Any]]) -> str:
    keys = sorted(
        {
            k
            for m in metrics.values()
            for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    parts = []
    for key in keys[:5]:
        values = [m[key] for m in metrics.values() if isinstance(m.get(key), (int, float))]
        parts.append(f"{key}={sum(values) / len(values):.4g}")
    return ", ".join(parts)
