"""A host's intake of uploads: admit the sender, read and check its tensors, fold them by what they are.

One path for every upload a host takes (a site's result, a relay's partial, a swarm aggregator's report),
streamed or handed over in process: the header is checked and its sender authenticated before any tensor
is read, the round and an upload slot are claimed, and a rejected upload is recorded against its sender.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hpcflare import errors
from hpcflare.fileio import spool_dir
from hpcflare.job import JobConfig
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster.staging import Stager
from hpcflare.runtime.host.membership import Membership, MemberState
from hpcflare.runtime.host.monitor import HostMonitor, payload_bytes
from hpcflare.runtime.host.round import Round, as_dict, weight_of
from hpcflare.runtime.host.upload import read_arrays, read_staged, read_upload
from hpcflare.settings import Settings
from hpcflare.strategy.api import ClientUpdate, Strategy, UpdateKind
from hpcflare.transport.api import Peer, UploadHeader


class UploadIntake:
    """Mixed into :class:`~hpcflare.runtime.host.round_host.RoundHost`: how it takes uploads."""

    settings: Settings
    log: RankLogger
    members: Membership
    round: Round | None

    authorize: Callable[[Peer, Any], None]
    config: JobConfig
    strategy: Strategy
    stager: Stager | None
    _cv: threading.Condition
    _uploading: dict[str, Any]
    _upload_slots: threading.BoundedSemaphore
    monitor: HostMonitor
    host_fault: OSError | None

    accepts_partials_from: Callable[[str], bool]
    _fold: Callable[[Round, ClientUpdate], None]

    def handle_upload(self, frames: Iterator[bytes], peer: Peer) -> dict[str, Any]:
        return self._accept_upload(
            peer,
            lambda on_header: read_upload(frames, self.settings, lambda opened: opened.expected, on_header),
        )

    def handle_local_upload(
        self, header: UploadHeader, tensors: Iterable[tuple[str, Any]], peer: Peer
    ) -> dict[str, Any]:
        return self._accept_upload(
            peer,
            lambda on_header: read_arrays(
                header, tensors, self.settings, lambda opened: opened.expected, on_header
            ),
        )

    def _accept_upload(
        self, peer: Peer, read: Callable[[Callable[[UploadHeader], Round]], tuple[UploadHeader, Round, Any]]
    ) -> dict[str, Any]:
        """Authenticate, read (a stream or in-process arrays), validate and fold one upload."""
        admission = _Admission(peer)
        rnd = self.round
        params: Any = None
        try:
            header, rnd, params = read(functools.partial(self._admit, admission))
            self.monitor.add_bytes(admission.site, "in", payload_bytes(params))
            params, staged_path = self._staged_params(header, rnd, params)
            self._take(admission.site, rnd, header, params)
            if staged_path is not None:
                staged_path.unlink(missing_ok=True)
            with self._cv:
                self._cv.notify_all()
            return {"accepted": True}
        except errors.StaleTaskError as exc:
            self.log.warning("late_result", str(exc), site=admission.site)
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # the host's own disk, not the site: end the job with that cause; the site waits and is told to end
            where = str(spool_dir())
            self.host_fault = OSError(
                exc.errno,
                f"{exc.strerror} in the upload spool (set HPCFLARE_SPOOL_DIR to a larger node-local disk, or "
                "raise settings.spool_tensor_bytes to keep uploads in memory)",
                where,
            )
            self.log.error(
                "spool_full",
                f"upload from {admission.site} could not be spooled: {exc.strerror} at {where}",
                site=admission.site,
                path=where,
            )
            with self._cv:
                self._cv.notify_all()
            raise errors.StaleTaskError(  # the site is not at fault: its result is set aside, the job ends
                f"not the site's fault: the server's upload spool at {where} is full; the job is ending"
            ) from None
        except (errors.UpdateRejectedError, errors.MalformedMessageError, errors.FrameTooLargeError) as exc:
            if rnd is not None and admission.site in self.members.live():
                rnd.reject(admission.site, str(exc))
            self.log.warning(
                "result_rejected",
                f"result from {admission.site} rejected: {exc}",
                site=admission.site,
                reason=str(exc),
                round=rnd.number if rnd else None,
            )
            raise
        finally:
            if hasattr(params, "close"):
                params.close()
            if admission.slot:
                self._upload_slots.release()
            with self._cv:
                if self._uploading.get(admission.site) is admission.peer.cancel:
                    del self._uploading[admission.site]

    def _admit(self, admission: _Admission, header: UploadHeader) -> Round:
        """An upload's header arrived: who sends it, for the open round, once; then an upload slot."""
        peer = admission.peer
        self.authorize(peer, header.site)
        record = self.members.check(header.site, header.token)
        site = admission.site = record.site
        if record.state in (MemberState.DEAD, MemberState.EXCLUDED):
            raise errors.StaleTaskError(
                f"result from {site} discarded: the job continues without it ({record.reason})"
            )
        rnd = self.round
        if rnd is None or not rnd.open or header.task_id != rnd.task_id:
            raise errors.StaleTaskError(
                f"result from {site} for task {header.task_id!r:.40} arrived after its "
                "round closed; discarded"
            )
        if header.params_type == UpdateKind.PARTIAL and not self.accepts_partials_from(site):
            raise errors.UpdateRejectedError(f"{site} is not a relay of this job; partial aggregates refused")
        if site in rnd.answered():
            raise errors.StaleTaskError(f"{site} already answered round {rnd.number}")
        with self._cv:  # one upload per site: a retry replaces a broken attempt the server still holds
            earlier = self._uploading.get(site)
            self._uploading[site] = peer.cancel
        if earlier is not None:
            self.log.info(
                "upload_replaced", f"{site} started a new upload; its earlier one is cancelled", site=site
            )
            earlier()
        if not self._upload_slots.acquire(timeout=self.settings.upload_slot_timeout):
            raise errors.StreamTimeoutError(
                "no upload slot free within settings.upload_slot_timeout="
                f"{self.settings.upload_slot_timeout}s"
            )
        admission.slot = True
        return rnd

    def _staged_params(self, header: UploadHeader, rnd: Round, params: Any) -> tuple[Any, Path | None]:
        """A result left on the shared filesystem replaces the (empty) streamed params: (params, its file)."""
        if header.staged is None:
            return params, None
        if self.stager is None or params:
            raise errors.MalformedMessageError(
                "staged result sent to a job without staging, or mixed with tensors"
            )
        staged_path, specs = self.stager.read_result(header.staged, self.settings.max_model_bytes)
        if not staged_path.is_relative_to(self.stager.root.resolve() / "results" / rnd.model.ref):
            raise errors.MalformedMessageError(f"staged result is not under results/{rnd.model.ref}/")
        params.close()
        return read_staged(staged_path, specs, rnd.expected, self.settings.spool_tensor_bytes), staged_path

    def _take(self, site: str, rnd: Round, header: UploadHeader, params: Any) -> None:
        """Fold a validated upload by its kind: a swarm aggregator's report, a relay's partial, a site's result."""
        if header.swarm is not None:
            report = rnd.fold_swarm(site, header.swarm, params, self.config.clients)
            accepted = sorted(as_dict(report.get("accepted")))
            self.strategy.coordinator_report(site, report)
            self.log.info(
                "swarm_round",
                f"round {rnd.number}: {site} aggregated {len(accepted)} update(s)",
                round=rnd.number,
                aggregator=site,
                sites=accepted,
            )
        elif header.params_type == UpdateKind.PARTIAL:
            sites, rejected = rnd.fold_partial(site, header.partial or {}, params)
            self.log.info(
                "partial_accepted",
                f"round {rnd.number}: partial aggregate from {site} over {len(sites)} "
                f"client(s) accepted" + (f"; {len(rejected)} excluded there" if rejected else ""),
                relay=site,
                round=rnd.number,
                sites=sorted(sites),
                rejected=rejected,
            )
        else:
            self._fold(
                rnd,
                ClientUpdate(
                    site,
                    params,
                    header.params_type,
                    weight_of(header.meta),
                    dict(header.metrics),
                    header.meta,
                ),
            )


@dataclasses.dataclass
class _Admission:
    """One upload on its way in: the caller, the site it authenticated as, whether it holds an upload slot."""

    peer: Peer
    site: str = "?"
    slot: bool = False
