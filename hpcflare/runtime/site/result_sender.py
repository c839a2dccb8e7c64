"""A site's side of a round's end: filter what leaves the site, stage or stream it, retry, report how it went."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from hpcflare import errors
from hpcflare.filters import apply_filters, build_filters
from hpcflare.filters.api import to_numpy
from hpcflare.job import JobDir
from hpcflare.privacy import check_privacy, site_privacy
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster import staging
from hpcflare.runtime.host.round import weight_of
from hpcflare.runtime.site.connection import Connection
from hpcflare.runtime.site.track_records import TrackBuffer
from hpcflare.transport.api import Rpc, Task, UpdateKind, UploadHeader
from hpcflare.transport.codec import as_framework

T = TypeVar("T")


def upload_once(fn: Callable[[], T]) -> T:
    """Uploads are not idempotent: retry only when nothing reached the server (connection refused)."""
    try:
        return fn()
    except errors.ServerBusyError:  # refused before the server read anything: safe to send again
        raise
    except errors.StreamTimeoutError as exc:  # may have been received: let the server's dedup decide
        raise errors.TransportError(str(exc)) from None


class ResultSender:
    def __init__(self, job_dir: JobDir, connection: Connection, log: RankLogger, tracks: TrackBuffer) -> None:
        self.connection, self.log, self.tracks = connection, log, tracks
        self.staging_root = connection.config.staging_root(job_dir.root)
        self.filters = build_filters(connection.config.filters)
        config = connection.config
        spec = (
            check_privacy(config.privacy, config.strategy, config.filters)
            if connection.site in config.clients
            else None
        )
        self.privacy = site_privacy(
            spec,
            connection.site,  # sites only: a relay's own link passes sums on
            config.job_id,
            lambda request, timeout: connection.call(Rpc.EXCHANGE, request, timeout),
            connection.settings.round_timeout,
            log,
            job_dir.root,
            getattr(connection.kit, "path", None),
        )
        self._global_copy: dict[str, Any] | None = None  # the round's model as received, for DP filters

    def received(self, task: Task, params: dict[str, Any]) -> dict[str, Any]:
        """The round's model as fetched (he: decrypted here) -> what the script gets. Filters that work on the
        update (DP), DIFF transfers and private aggregation keep a copy of it."""
        if self.privacy is not None:
            params = self.privacy.received(task, params)
            if self.connection.config.framework == "pytorch":  # decrypted as numpy; the script gets tensors
                params = {k: as_framework(v, "pytorch") for k, v in params.items()}
        if (
            any(f.needs_global for f in self.filters)
            or self.connection.config.params_transfer_type == "DIFF"
            or self.privacy is not None
        ):
            self._global_copy = {k: np.array(to_numpy(v), copy=True) for k, v in params.items()}
        return params

    def _private(
        self, task: Task, params: dict[str, Any], params_type: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """The update as private aggregation sends it: every tensor of the round's model, as its difference to
        the received model or whole (privacy.sends; what the site did not send counts as unchanged), masked or
        encrypted."""
        assert self.privacy is not None
        base = self._global_copy or {}
        update = {}
        for name, value in base.items():
            if name not in params:
                update[name] = (
                    np.zeros(value.shape, np.float64)
                    if self.privacy.sends == "DIFF"
                    else np.asarray(value, np.float64)
                )
                continue
            array = np.asarray(to_numpy(params[name]), dtype=np.float64)
            if self.privacy.sends == "DIFF":
                update[name] = array if params_type == "DIFF" else array - value
            else:
                update[name] = array + value if params_type == "DIFF" else array
        unknown = sorted(set(params) - set(base))
        if unknown:
            raise errors.UpdateRejectedError(
                f"tensors {unknown[:5]} are not in the round's model; private "
                "aggregation sums only the model's own tensors"
            )
        return self.privacy.protect(task, update, weight_of(meta))

    def _as_diff(self, params: dict[str, Any]) -> dict[str, Any]:
        """params_transfer_type DIFF: what the script trained, minus the model it received."""
        base = self._global_copy or {}
        out = {}
        for name, value in params.items():
            array = to_numpy(value)
            out[name] = np.subtract(array, base[name], dtype=array.dtype) if name in base else array
        return out

    def _stage(self, task: Task, params: dict[str, Any]) -> dict[str, Any] | None:
        """Leave the result on the shared filesystem; None (stream it instead) if this node cannot write there."""
        name = f"results/{task.ref}/{self.connection.site}.safetensors"
        try:
            if not (self.staging_root / "results").is_dir():
                return None
            return {"file": name, **staging.write_atomic(staging.confined(self.staging_root, name), params)}
        except OSError as exc:
            self.log.info(
                "staging_fallback", f"cannot stage result ({exc}); streaming it over gRPC", round=task.round
            )
            return None

    def send(
        self,
        task: Task,
        params: dict[str, Any],
        params_type: str,
        meta: dict[str, Any],
        metrics: dict[str, Any],
    ) -> None:
        conn = self.connection
        self.tracks.flush()  # the round's tracking records reach the server before its result
        if (
            params_type == "FULL"
            and params
            and conn.config.params_transfer_type == "DIFF"
            and self._global_copy
        ):
            params, params_type = self._as_diff(params), "DIFF"
        header = UploadHeader(
            conn.site, conn.token, task.task_id, task.round, UpdateKind(params_type), meta, metrics
        )
        t0 = time.monotonic()
        if self.filters:  # privacy / bandwidth filters on what leaves the site
            out = apply_filters(
                self.filters, params, header.params_type, self._global_copy, quantize=not task.staged
            )
            params, header.params_type = out.params, UpdateKind(out.params_type)
            if out.quant:
                header.quant = out.quant
        private = self.privacy is not None and "privacy" in task.meta
        if private:
            try:
                params = self._private(task, params, header.params_type, meta)
                header.params_type = UpdateKind.DIFF
            except (
                errors.StaleTaskError
            ) as exc:  # e.g. too late for the round's key exchange: the round goes on
                self.log.warning(
                    "result_late",
                    f"round {task.round}: not part of this round's private aggregation: {exc}",
                    round=task.round,
                )
                return
        staged = self._stage(task, params) if task.staged else None
        if staged is not None:
            header.quant, header.staged = None, staged
        wire_bytes = 0 if staged else sum(int(getattr(v, "nbytes", 0)) for v in params.values())

        def push() -> dict:
            if conn.hooks.deliver(task, header, params):  # e.g. to this round's swarm aggregator
                return {}
            transport, token = conn.credentials()
            return transport.upload(
                dataclasses.replace(header, token=token), [] if staged else params.items()
            )

        try:
            try:
                conn.retry(Rpc.UPLOAD, lambda: upload_once(push), failover=True)
            except errors.TransportError as exc:  # a relay dying mid-stream breaks it in several ways
                if not conn.relay_gone(exc):
                    raise
                conn.retry(Rpc.UPLOAD, lambda: upload_once(push), failover=True)
        except errors.StaleTaskError as exc:
            self.log.warning(
                "result_late",
                f"round {task.round}: result discarded, the round had closed: {exc}",
                round=task.round,
            )
            return
        except errors.UpdateRejectedError as exc:
            self.log.error(
                "result_rejected", f"round {task.round}: server rejected the update: {exc}", round=task.round
            )
            raise
        if private:
            try:
                self.privacy.uploaded(task)  # type: ignore[union-attr]
            except errors.StaleTaskError as exc:
                self.log.warning(
                    "result_late", f"round {task.round}: update not in the sum: {exc}", round=task.round
                )
        via = (
            "staging"
            if staged
            else "client rank"
            if conn.parent is not None
            else getattr(conn.transport, "last_via", "grpc")
        )
        took = time.monotonic() - t0
        self.log.info(
            "result_sent",
            f"round {task.round}: result sent via {via} ({header.params_type}) in "
            f"{took:.2f}s ({wire_bytes / 1e6:.2f} MB of tensors)",
            round=task.round,
            metrics=header.metrics,
            via=via,
            seconds=took,
            bytes=wire_bytes,
            quant=sorted({q["mode"] for q in (header.quant or {}).values()}),
        )
