"""A job on disk: its config (job.yaml) and the directory every rank reads and writes.

    <job_dir>/job.yaml                     what to run (this file's JobConfig)
    <job_dir>/app/                         the training script(s), copied so the job is self-contained
    <job_dir>/models/initial_model.safetensors, global_model.safetensors (the result)
    <job_dir>/logs/<rank>.jsonl|.log|.out  per-rank structured log, human log, raw stdout/stderr
    <job_dir>/rendezvous/server.json       where the server listens (atomic write)
    <job_dir>/sites/<site>/                a client's working directory
    <job_dir>/status.json                  job state, written atomically by the server
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write_text
from hpcflare.filters import build_filters
from hpcflare.settings import Settings
from hpcflare.strategy import STRATEGIES

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FRAMEWORKS = ("numpy", "pytorch")


@dataclasses.dataclass
class JobConfig:
    name: str
    job_id: str
    num_rounds: int
    min_clients: int
    clients: list[str]
    train_script: str
    train_args: list[str] = dataclasses.field(default_factory=list)
    strategy: str = "fedavg"
    strategy_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the strategy (FedOpt's optimizer and lr, SCAFFOLD's ...); checked at job start."""
    framework: str = "numpy"
    settings_profile: str = "dev"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    initial_model: str = "models/initial_model.safetensors"
    min_fraction: float = 0.0
    """A round also needs this fraction of the clients it started with (besides min_clients) to close."""
    relays: int = 0
    """Relay ranks between server and clients; each aggregates its clients' updates into one partial sum."""
    relay_failover: str = "direct"
    """When a client's relay dies: 'direct' = reconnect to the server, 'exclude' = drop out of the job."""
    staging: bool = False
    """Broadcast models (and take results) through a shared-filesystem directory; gRPC stays the fallback."""
    staging_dir: str = "staging"
    """Staging root: relative to the job dir, or an absolute path on Lustre/GPFS/NFS. Sites that mount it
    elsewhere set HPCFLARE_STAGING_DIR."""
    filters: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """What leaves a site: [{type: exclude|dp_gaussian|quantize, ...}] in order (see hpcflare.filters)."""
    tracking: list[str] = dataclasses.field(default_factory=lambda: ["csv"])
    """Where sites' metrics are written per round: 'csv' and/or 'tensorboard' (under tracking/)."""
    key_metric: str | None = None
    """Metric for best-model selection (models/best_model.safetensors) and early stopping, e.g. 'accuracy'."""
    key_metric_mode: str = "max"
    early_stop_patience: int = 0
    """End the job after this many rounds without a better key_metric (0 = never)."""
    tls: str = "auto"
    """Mutual TLS on every channel: 'on', 'off', or 'auto' (on for Slurm/MPI, off for local/sim runs)."""
    kits_dir: str = "kits"
    """Startup kits (one folder per participant): relative to the job dir, or the output of hpcflare provision."""

    def staging_root(self, job_root: Path) -> Path:
        override = os.environ.get("HPCFLARE_STAGING_DIR")
        return Path(override) if override else (job_root / self.staging_dir)

    def validate(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError(f"num_rounds must be >= 1, got {self.num_rounds}")
        if not self.clients:
            raise ConfigError("a job needs at least one client site")
        if not 1 <= self.min_clients <= len(self.clients):
            raise ConfigError(f"min_clients={self.min_clients} must be between 1 and the number of clients ({len(self.clients)})")
        for site in self.clients:
            if not SITE_NAME.match(site):
                raise ConfigError(f"invalid site name {site!r}: use letters, digits, '_', '.', '-' (max 64)")
        if len(set(self.clients)) != len(self.clients):
            raise ConfigError("site names must be unique")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; available: {sorted(STRATEGIES)}")
        strategy = self.new_strategy()
        if self.relays and not strategy.supports_relays:
            raise ConfigError(f"strategy {self.strategy!r} addresses single sites or collects whole models: run it "
                              "without relays (relays: 0)")
        if not 0.0 <= float(self.min_fraction) <= 1.0:
            raise ConfigError(f"min_fraction={self.min_fraction} must be between 0 and 1")
        if not 0 <= self.relays <= len(self.clients):
            raise ConfigError(f"relays={self.relays} must be between 0 and the number of clients ({len(self.clients)})")
        if self.relay_failover not in ("direct", "exclude"):
            raise ConfigError(f"relay_failover must be 'direct' or 'exclude', got {self.relay_failover!r}")
        if not isinstance(self.staging, bool):
            raise ConfigError(f"staging must be true or false, got {self.staging!r}")
        build_filters(self.filters)
        if not isinstance(self.tracking, list) or set(self.tracking) - {"csv", "tensorboard"}:
            raise ConfigError(f"tracking must be a list of 'csv'/'tensorboard', got {self.tracking!r}")
        if self.key_metric_mode not in ("max", "min"):
            raise ConfigError(f"key_metric_mode must be 'max' or 'min', got {self.key_metric_mode!r}")
        if not isinstance(self.early_stop_patience, int) or self.early_stop_patience < 0:
            raise ConfigError(f"early_stop_patience must be an integer >= 0, got {self.early_stop_patience!r}")
        if self.early_stop_patience and not self.key_metric:
            raise ConfigError("early_stop_patience needs a key_metric to watch")
        if self.tls not in ("auto", "on", "off"):
            raise ConfigError(f"tls must be 'auto', 'on' or 'off', got {self.tls!r}")
        if self.framework not in FRAMEWORKS:
            raise ConfigError(f"framework must be one of {FRAMEWORKS}, got {self.framework!r}")
        self.load_settings()  # raises ConfigError on bad profile/overrides

    def new_strategy(self) -> Any:
        if not isinstance(self.strategy_args, dict):
            raise ConfigError(f"strategy_args must be a mapping, got {self.strategy_args!r}")
        try:
            return STRATEGIES[self.strategy](**self.strategy_args)
        except TypeError as exc:
            raise ConfigError(f"strategy {self.strategy!r}: bad strategy_args {self.strategy_args}: {exc}") from None

    def relay_names(self) -> list[str]:
        return [f"relay-{i}" for i in range(1, self.relays + 1)]

    def load_settings(self) -> Settings:
        return Settings.load(self.settings_profile, self.settings)

    @classmethod
    def from_dict(cls, data: Any, source: str = "job config") -> "JobConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        try:
            config = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        config.validate()
        return config


class JobDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    config_path = property(lambda self: self.root / "job.yaml")
    app_dir = property(lambda self: self.root / "app")
    models_dir = property(lambda self: self.root / "models")
    log_dir = property(lambda self: self.root / "logs")
    rendezvous_dir = property(lambda self: self.root / "rendezvous")
    status_path = property(lambda self: self.root / "status.json")
    result_model_path = property(lambda self: self.root / "models" / "global_model.safetensors")

    def site_dir(self, site: str) -> Path:
        if not SITE_NAME.match(site):
            raise ConfigError(f"invalid site name {site!r}")
        return self.root / "sites" / site

    def create(self, config: JobConfig) -> None:
        config.validate()
        for d in (self.root, self.app_dir, self.models_dir, self.log_dir, self.rendezvous_dir):
            d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    def load_config(self) -> JobConfig:
        if not self.config_path.is_file():
            raise ConfigError(f"no job.yaml in {self.root}; is this a job directory? (create one with recipe.export())")
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.config_path}: invalid YAML: {exc}") from None
        return JobConfig.from_dict(data, str(self.config_path))

    def write_status(self, state: str, **fields: Any) -> None:
        atomic_write_text(self.status_path, json.dumps({"state": state, "updated": time.time(), **fields}, indent=1))

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {"state": "pending"}
        except ValueError:
            return {"state": "unknown", "message": f"unreadable {self.status_path}"}
