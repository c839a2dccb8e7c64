"""The server rank: registration, rounds, in-time aggregation, checkpoints, the result model.

A round is dispatched to every live client (directly or through relays); it closes when every live client
has answered (accepted or rejected), or at ``round_timeout`` if at least ``min_clients`` results were
accepted. Results for a closed round are discarded and logged, never mixed into a later one.
"""

from __future__ import annotations

import os
from typing import Any

from hpcflare import errors
from hpcflare.exitcodes import ExitCode, exit_for, format_traceback, needs_traceback
from hpcflare.job import JobConfig, JobDir, JobState
from hpcflare.monitoring import Exporter, JobMetrics, MetricsConfig
from hpcflare.monitoring.series import job_files
from hpcflare.rank_logger import RankLogger, plural
from hpcflare.runtime.cluster.memory import release_memory
from hpcflare.runtime.cluster.rendezvous import SERVER, FileRendezvous, Rendezvous, incarnation
from hpcflare.runtime.cluster.scheduler_end import ending_error
from hpcflare.runtime.cluster.staging import Stager
from hpcflare.runtime.host.checkpoints import Checkpoints
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.round_host import HostPhase, RoundHost
from hpcflare.runtime.host.selection import ModelSelector
from hpcflare.runtime.host.tracking import Tracker
from hpcflare.runtime.registration import ServerRegistration
from hpcflare.runtime.server_rounds import RoundDriver
from hpcflare.security.jobs import load_kit
from hpcflare.strategy.api import ServerContext
from hpcflare.transport.grpc_server import GrpcServer
from hpcflare.transport.inproc import publish_local, withdraw_local
from hpcflare.transport.model_files import load_params


class FLServer(ServerRegistration, RoundDriver, RoundHost):
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
        self.end_cause: errors.HpcflareError | None = None  # what abort() ends the job with, if not an abort
        self.last_metrics: dict[str, float] = {}
        self.last_aggregated = 0
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
        exports = MetricsConfig.from_dict(config.metrics)
        self.metrics = JobMetrics(config.job_id, self.monitor.view, exports.site_series_cap)
        log.listeners.append(self.metrics.on_event)
        self.exporter = Exporter(
            exports,
            self.metrics.registry,
            settings.metrics_interval,
            log,
            config.job_id,
            files=lambda: job_files(self.monitor.view(), exports.site_series_cap),
            files_dir=job_dir.root / "metrics",
            on_drop=self.metrics.statsd_drops.labels(config.job_id).inc,
        )

    def on_track(self, site: str, records: list) -> None:
        if site in self.hosts:
            raise errors.MalformedMessageError(
                "relays and client ranks forward tracking records in their sites' names"
            )
        records = self.admit_tracking(site, records)
        skipped = self.tracker.record_steps(site, records) if records else 0
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
            f"{plural(len(cfg.clients), 'client')} expected (min {cfg.min_clients}), "
            f"{plural(len(self.relays), 'relay')}, {plural(cfg.num_rounds, 'round')}",
            address=self.address,
            clients=cfg.clients,
            relays=self.relays,
            min_clients=cfg.min_clients,
            incarnation=incarnation(),
            node=os.environ.get("SLURMD_NODENAME", ""),
            tls=kit is not None,
        )
        protections = update_protections(cfg, kit is not None)
        self.log.info(
            "protections",
            "updates are protected by: "
            + ("; ".join(protections) or "nothing (plain text, no privacy or filters)"),
            protections=protections,
        )
        self._status(JobState.REGISTRATION)
        try:
            self.exporter.start()
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
            lost = self._lost()
            self.log.info(
                "job_completed",
                f"job {cfg.job_id} completed: {plural(rounds, 'round')}; "
                f"result model written to {self.job_dir.result_model_path}"
                + (f"; without {len(lost)} site(s) lost on the way: {sorted(lost)[:10]}" if lost else ""),
                result_model=str(self.job_dir.result_model_path),
                lost=lost,
            )
            self._status(JobState.COMPLETED, result_model=str(self.job_dir.result_model_path), lost=lost)
            return ExitCode.OK
        except Exception as exc:  # noqa: BLE001 - every end is recorded in status.json with its cause
            code, reason = exit_for(exc)
            # Slurm is ending the job (a lost node...): what failed meanwhile follows from it
            ending = None if self.end_cause else ending_error(os.environ)
            if ending is not None:
                code, reason = exit_for(ending)[0], f"{ending} (meanwhile: {reason})"
            if needs_traceback(code):
                self.log.error("traceback", format_traceback(exc))
            return self._fail(
                reason, code, state=JobState.ABORTED if code == ExitCode.ABORTED else JobState.FAILED
            )
        finally:
            self.exporter.stop()
            self.strategy.stop_services()
            self.tracker.close()
            self.drain(s.end_grace)
            withdraw_local(self.address)
            self.grpc.stop()

    def abort(self, reason: str, cause: errors.HpcflareError | None = None) -> None:
        """End the job: ``cause``, when given, is the error it ends with (a lost node, the time limit), else it
        is aborted for ``reason``."""
        with self._cv:
            self.end_reason = f"aborted: {reason}" if cause is None else str(cause)
            self.end_cause = cause
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
        if self.host_fault is not None:
            raise self.host_fault
        if self.phase == HostPhase.ABORTING:
            raise self.end_cause or errors.JobAbortedError(self.end_reason)

    def _new_model(self, params: Any, number: int, nbytes: int | None = None) -> GlobalModel:
        """The round's model, in a spool file when it is at least settings.model_file_bytes (``nbytes``: its
        size when ``params`` is a lazy iterable)."""
        if nbytes is None:
            nbytes = sum(value.nbytes for value in params.values())
        return GlobalModel(params, number, in_file=nbytes >= self.settings.model_file_bytes)


def update_protections(config: JobConfig, tls: bool) -> list[str]:
    """What protects a site's update on its way (one line at job start): the channel, private aggregation, and
    the filters in the order the sites apply them."""
    out = ["mutual TLS" if tls else "", ""]
    privacy = config.privacy if isinstance(config.privacy, dict) else {"type": config.privacy}
    out[1] = {"secagg": "secure aggregation (masked updates)", "he": "homomorphic encryption (CKKS)"}.get(
        str(privacy.get("type")), ""
    )
    names = {
        "dp_gaussian": "differential privacy (Gaussian noise)",
        "quantize": "quantization",
        "exclude": "exclusion",
    }
    for f in config.filters:
        kind = f.get("type") if isinstance(f, dict) else None
        out.append(f"{names.get(str(kind), str(kind))} filter" + (f" ({f['mode']})" if "mode" in f else ""))
    return [p for p in out if p]
