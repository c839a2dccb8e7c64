"""Sending a registry's metrics out: a Prometheus HTTP endpoint, a node_exporter textfile, StatsD pushes, and
the job's own metrics files (``<job>/metrics/``, what ``hpcflare dashboard`` shows: see
:mod:`hpcflare.monitoring.series`).

Each export is off unless :class:`MetricsConfig` names it. None may slow a round: the endpoint is served by
its own thread, the textfile and StatsD are written by one background thread every ``metrics_interval``, and
StatsD is UDP with non-blocking sends (a packet that cannot be sent is counted, never retried).
"""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.samples import Sample

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write
from hpcflare.monitoring.config import MetricsConfig
from hpcflare.rank_logger import RankLogger

STATSD_PACKET_BYTES = 1400
"""Largest StatsD datagram sent (fits one Ethernet frame: no IP fragmentation, which loses whole packets)."""
SERIES_MAX_BYTES = 256 << 20
"""The metrics series file stops growing here (a long job's dashboard keeps what it has; exports go on)."""


class Exporter:
    """Starts the configured exports for ``registry``; :meth:`stop` ends them (and writes one last time)."""

    def __init__(
        self,
        config: MetricsConfig,
        registry: CollectorRegistry,
        interval: float,
        log: RankLogger,
        job_id: str,
        files: Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None = None,
        files_dir: Path | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.config, self.registry, self.interval, self.log = config, registry, interval, log
        self.textfile = config.textfile_for(job_id) if config.textfile else ""
        self.files, self.files_dir = files, files_dir
        """``files()``: (a line for series.jsonl, the new sites.json), written under ``files_dir``."""
        self.on_drop = on_drop or (lambda n: None)
        self._http: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._statsd: _Statsd | None = None

    def start(self) -> None:
        """Open the endpoint (ConfigError naming the setting when its port is taken) and start the writer."""
        c = self.config
        if c.prometheus_port:
            try:
                self._http, _ = start_http_server(c.prometheus_port, c.prometheus_bind, self.registry)
            except OSError as exc:
                raise ConfigError(
                    f"metrics.prometheus_port={c.prometheus_port} cannot be opened on "
                    f"{c.prometheus_bind} ({exc.strerror or exc}): choose a free port in job.yaml's metrics "
                    "section, or 0 for no endpoint"
                ) from None
        if c.statsd_address:
            self._statsd = _Statsd(c.statsd_address, c.statsd_prefix, self.on_drop)
        if self.textfile:
            Path(self.textfile).parent.mkdir(parents=True, exist_ok=True)
        if c.exports:
            self.log.info("metrics_exported", "metrics: " + ", ".join(c.exports), exports=c.exports)
        if self.textfile or self._statsd or (self.files and self.files_dir):
            self._thread = threading.Thread(target=self._loop, name="metrics-export", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.write_once()

    def write_once(self) -> None:
        """One refresh of the textfile, one StatsD push, the job's metrics files; failures are logged, never
        raised."""
        try:
            if self.textfile:
                atomic_write(Path(self.textfile), generate_latest(self.registry))
            if self._statsd is not None:
                self._statsd.push(self.registry)
            if self.files is not None and self.files_dir is not None:
                self._write_files(self.files_dir, *self.files())
        except Exception as exc:  # noqa: BLE001 - metrics are never worth a failed job
            self.log.warning("metrics_export_failed", f"metrics export failed (the job goes on): {exc}")

    @staticmethod
    def _write_files(folder: Path, line: dict[str, Any], sites: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        series = folder / "series.jsonl"
        if not series.exists() or series.stat().st_size <= SERIES_MAX_BYTES:
            with open(series, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, separators=(",", ":"), default=float) + "\n")
        atomic_write(folder / "sites.json", json.dumps(sites, separators=(",", ":"), default=float))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self.write_once()  # the job's last state, not one interval before it
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._statsd is not None:
            self._statsd.close()


class _Statsd:
    """StatsD over UDP: gauges as ``|g``, counters as the increase since the last push (``|c``), labels as
    DogStatsD tags (``|#job:...,site:...``), which statsd_exporter, Telegraf and Datadog read."""

    def __init__(self, address: str, prefix: str, on_drop: Callable[[int], None]) -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port = host.strip("[]"), int(port)
        self.sock: socket.socket | None = None
        self.target: Any = None
        self.prefix, self.on_drop = prefix, on_drop
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def lines(self, registry: CollectorRegistry) -> list[str]:
        out = []
        for family in registry.collect():
            for sample in family.samples:
                line = self._line(family.type, sample)
                if line:
                    out.append(line)
        return out

    def _line(self, kind: str, sample: Sample) -> str:
        if not math.isfinite(sample.value) or sample.name.endswith(("_created", "_bucket")):
            return ""
        labels = tuple(sorted(sample.labels.items()))
        tags = ",".join(f"{k}:{_tag(v)}" for k, v in labels)
        name = f"{self.prefix}.{sample.name.removeprefix('hpcflare_')}"
        if kind in ("counter", "histogram", "summary"):  # _total, _sum, _count: send the increase
            key = (sample.name, labels)
            delta, self._last[key] = sample.value - self._last.get(key, 0.0), sample.value
            if delta <= 0:
                return ""
            return f"{name}:{_number(delta)}|c" + (f"|#{tags}" if tags else "")
        return f"{name}:{_number(sample.value)}|g" + (f"|#{tags}" if tags else "")

    def push(self, registry: CollectorRegistry) -> None:
        packet = b""
        for line in self.lines(registry):
            data = line.encode()
            if packet and len(packet) + 1 + len(data) > STATSD_PACKET_BYTES:
                self._send(packet)
                packet = b""
            packet = packet + b"\n" + data if packet else data
        if packet:
            self._send(packet)

    def _resolve(self) -> bool:
        """The address, looked up in the export thread (a slow resolver never holds a round up); a failed
        lookup is tried again at the next push."""
        if self.sock is None:
            try:
                family, _, _, _, target = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            except OSError:
                return False
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            self.target = target
        return True

    def _send(self, packet: bytes) -> None:
        if not self._resolve():
            self.on_drop(1)
            return
        assert self.sock is not None
        try:
            self.sock.sendto(packet, self.target)
        except OSError:  # unreachable, no route, buffer full, name not resolved: counted, never waited on
            self.on_drop(1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _tag(value: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./" else "_" for c in value)[:200]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
