"""Where a job's metrics go: the ``metrics:`` section of job.yaml (and of the standing server's server.yaml).

Every export is off unless named here::

    metrics:
      prometheus_port: 9464        # an HTTP endpoint on the server rank for Prometheus to scrape
      prometheus_bind: 0.0.0.0     # interface it listens on (it serves counts and names, never data)
      textfile: /var/lib/node_exporter/textfile/hpcflare-{job_id}.prom   # node_exporter's textfile collector
      statsd_address: statsd.example.org:8125                           # StatsD/DogStatsD pushes (UDP)
      statsd_prefix: hpcflare
      site_series_cap: 1000        # per-site series up to this many sites; beyond it, per client rank

How often ranks sample themselves and how often exports are refreshed is ``settings.metrics_interval``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hpcflare.errors import ConfigError

HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    prometheus_port: int = 0
    """Port of the Prometheus endpoint on the server rank (0: none)."""
    prometheus_bind: str = "0.0.0.0"
    """Interface the Prometheus endpoint listens on; 127.0.0.1 keeps it to the node."""
    textfile: str = ""
    """A file for node_exporter's textfile collector, rewritten atomically every metrics_interval ('{job_id}' is
    replaced by the job's id); '' for none. For clusters where no port may be opened."""
    statsd_address: str = ""
    """HOST:PORT of a StatsD server (DogStatsD tags carry the labels); '' for none. UDP, fire and forget."""
    statsd_prefix: str = "hpcflare"
    site_series_cap: int = 1000
    """Sites that get series of their own; a job with more is reported per client rank (bounded cardinality)."""

    @property
    def exports(self) -> list[str]:
        """The exports this config turns on, in words."""
        out = []
        if self.prometheus_port:
            out.append(f"Prometheus on {self.prometheus_bind}:{self.prometheus_port}")
        if self.textfile:
            out.append(f"textfile {self.textfile}")
        if self.statsd_address:
            out.append(f"StatsD {self.statsd_address}")
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "metrics") -> MetricsConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping of {[f.name for f in dataclasses.fields(cls)]}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown}; valid: {[f.name for f in dataclasses.fields(cls)]}"
            )
        config = cls(**data)
        port = config.prometheus_port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(
                f"{where}.prometheus_port must be a port number (1-65535, 0 for none), got {port!r}"
            )
        cap = config.site_series_cap
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= 100_000:
            raise ConfigError(f"{where}.site_series_cap must be a whole number in 0..100000, got {cap!r}")
        for key in ("prometheus_bind", "textfile", "statsd_address", "statsd_prefix"):
            if not isinstance(getattr(config, key), str):
                raise ConfigError(f"{where}.{key} must be a string, got {getattr(config, key)!r}")
        if config.statsd_address and not HOST_PORT.match(config.statsd_address):
            raise ConfigError(f"{where}.statsd_address must read HOST:PORT, got {config.statsd_address!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", config.statsd_prefix):
            raise ConfigError(
                f"{where}.statsd_prefix must be letters, digits, '_' and '.', got {config.statsd_prefix!r}"
            )
        return config

    def textfile_for(self, job_id: str) -> str:
        return self.textfile.replace("{job_id}", job_id)
