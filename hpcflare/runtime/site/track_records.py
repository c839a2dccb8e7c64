"""A site's tracking records on their way to the server: buffered, batched, sent on their own RPC.

Records (``flare.log``, ``SummaryWriter.add_scalar``, ``MLflowWriter.log_metric``, ...) never ride in a result
header: a relay's partial header carries only per-site metrics, so thousands of per-step scalars cannot push
it past the frame limit. A batch goes up as one ``Track`` call (a relay forwards it unchanged) when
``TRACK_BATCH`` records are waiting, when ``settings.tracking_flush_interval`` has passed, before each
result, and when the site closes. Per round, ``settings.tracking_max_records_per_round`` bounds what is kept.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.site.connection import Connection
from hpcflare.transport.api import Rpc
from hpcflare.transport.codec import pack_meta

TRACK_BATCH = 512
"""Records per Track call (fewer when they are large: a call stays under half of settings.max_frame_bytes)."""
MAX_TEXT = 64 << 10
"""Longest string value kept in a record (TEXT artifacts, tags, parameters); longer ones are cut."""
FINAL_FLUSH_TIMEOUT = 5.0
"""Seconds the last flush (a closing site, the job over) may take: one attempt, the server may be gone."""
DATA_TYPES = frozenset(
    {"SCALAR", "SCALARS", "METRIC", "METRICS", "PARAMETER", "PARAMETERS", "TAG", "TAGS", "TEXT"}
)
"""Record kinds the server's receivers write; others (IMAGE, LOG_RECORD) stay in the site's own log."""


def plain(value: Any) -> Any:
    """A record value as msgpack can carry it: numbers (numpy/torch scalars too), strings, flat dicts of those."""
    if isinstance(value, dict):
        return {str(k)[:250]: plain(v) for k, v in value.items() if not isinstance(v, dict)}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return (
            value if math.isfinite(value) else repr(value)
        )  # NaN/inf as text, never a number that breaks plots
    if hasattr(value, "item"):  # numpy / torch scalars and one-element arrays
        try:
            return plain(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_TEXT]


class TrackBuffer:
    def __init__(self, connection: Connection, log: RankLogger) -> None:
        self.connection, self.log = connection, log
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._per_round: dict[Any, int] = {}
        self._warned: set[Any] = set()
        self._last_flush = time.monotonic()

    def add(self, record: dict[str, Any]) -> bool:
        """Queue one record; False (and one warning per round) past the per-round limit or for a kind no
        receiver writes."""
        kind = str(record.get("data_type", "SCALAR"))
        if kind not in DATA_TYPES:
            self.log.info(
                "metric",
                f"{kind} {record.get('key')} kept in this site's log only (not tracked)",
                key=str(record.get("key")),
                data_type=kind,
            )
            return False
        entry = {
            str(k): plain(v)
            for k, v in record.items()
            if k == "value" or v is None or isinstance(v, (str, int, float, bool))
        }
        limit = self.connection.settings.tracking_max_records_per_round
        with self._lock:
            rnd = entry.get("round")
            count = self._per_round.get(rnd, 0)
            if count >= limit:
                if rnd not in self._warned:
                    self._warned.add(rnd)
                    self.log.warning(
                        "tracking_dropped",
                        f"round {rnd}: more than settings.tracking_max_records_per_"
                        f"round={limit} tracking records; the rest of this round's are dropped (log "
                        "less often, or raise the setting)",
                        round=rnd,
                        limit=limit,
                    )
                return False
            self._per_round[rnd] = count + 1
            self._records.append(entry)
            due = len(self._records) >= TRACK_BATCH or (
                time.monotonic() - self._last_flush >= self.connection.settings.tracking_flush_interval
            )
        if due:
            self.flush()
        return True

    def flush(self, final: bool = False) -> None:
        """Send everything queued; a failure is logged (training goes on), never raised into the script.
        ``final`` (the site is closing after the job ended): one attempt of at most FINAL_FLUSH_TIMEOUT, no
        retries until settings.server_lost_timeout, since the server may already be gone."""
        with self._send_lock:
            with self._lock:
                records, self._records = self._records, []
                self._last_flush = time.monotonic()
            if not records or not self.connection.started:
                with self._lock:
                    self._records[:0] = records
                return
            try:
                for batch in self._batches(records):
                    timeout = self.connection.settings.rpc_timeout
                    self.connection.call(
                        Rpc.TRACK,
                        {"records": batch},
                        min(timeout, FINAL_FLUSH_TIMEOUT) if final else timeout,
                        once=final,
                    )
            except errors.HpcflareError as exc:
                self.log.warning(
                    "tracking_lost",
                    f"{len(records)} tracking record(s) could not be sent: {exc}",
                    records=len(records),
                )

    def _batches(self, records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        budget = self.connection.settings.max_frame_bytes // 2
        out: list[list[dict[str, Any]]] = [[]]
        size = 0
        for record in records:
            n = len(pack_meta(record))
            if out[-1] and (len(out[-1]) >= TRACK_BATCH or size + n > budget):
                out.append([])
                size = 0
            if n > budget:  # a single huge record: its text was already cut; cut harder rather than lose it
                record = {**record, "value": str(record.get("value"))[: budget // 2]}
                n = len(pack_meta(record))
            out[-1].append(record)
            size += n
        return [b for b in out if b]
