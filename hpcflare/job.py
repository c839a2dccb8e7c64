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
import hashlib
import hmac
import json
import operator
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from hpcflare.enums import NamedEnum
from hpcflare.errors import ConfigError, RegistrationRefusedError
from hpcflare.fileio import atomic_write, atomic_write_text
from hpcflare.monitoring.config import MetricsConfig
from hpcflare.plugins import CONFIG_CHECKS, STRATEGIES, STRATEGY_WRAPPERS
from hpcflare.rank_logger import iso_utc
from hpcflare.settings import Settings

AGENT_RECORD = "agent.json"
"""The file name of a site agent's record of one job (see JobDir.agent_record)."""
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class JobState(NamedEnum):
    """A job's state in its ``status.json`` (written by its server, or by whoever saw it end)."""

    PENDING = "pending"
    """No status yet: nothing of the job has started."""
    REGISTRATION = "registration"
    """The server is up and waits for its sites to register."""
    RUNNING = "running"
    RESUMING = "resuming"
    """Restarted from its last checkpoint (a requeued or resumed job)."""
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"
    """status.json exists but cannot be read."""


FINAL_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)
RESERVED_DIRS = frozenset(
    {".", "app", "models", "logs", "rendezvous", "sites", "kits", "tracking", "slurm", "metrics"}
)
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


MAX_COUNT = 1_000_000
"""The largest count a job may ask for (rounds, clients per rank, relays): anything above is a typo (1e18)."""


def whole_number(key: str, value: Any, minimum: int, maximum: int = MAX_COUNT) -> int:
    """``value`` as an int in [``minimum``, ``maximum``]; a bool, string, fraction or NaN is a ConfigError naming
    ``key``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{key} must be at most {maximum:,}, got {value!r}")
    return int(value)


def fraction(key: str, value: Any) -> float:
    """``value`` as a float in [0, 1]; anything else is a ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}={value!r} must be a number between 0 and 1")
    return float(value)


def check_job_name(name: Any) -> str:
    """A job name becomes a directory name: no path separators, no '..', no leading dot."""
    if not isinstance(name, str) or not JOB_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"job name {name!r} must be letters, digits, '_', '.', '-' (max 100, not starting with '.', "
            "no '..' or '/'): it becomes a directory name"
        )
    return name


FRAMEWORKS = ("numpy", "pytorch", "tensorflow")
"""How sites receive params: numpy arrays, torch tensors, or numpy arrays in Keras' shapes (tensorflow)."""
TRACKING_BACKENDS = ("csv", "tensorboard", "mlflow", "wandb")
STOP_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
"""The comparisons a stop condition may use (two-character ones first: the pattern tries them in order)."""


def parse_stop_condition(text: Any) -> tuple[str, str, float]:
    """'accuracy >= 0.9' -> ('accuracy', '>=', 0.9); anything else is a ConfigError showing the form."""
    ops = "|".join(re.escape(op) for op in STOP_OPERATORS)
    match = (
        re.fullmatch(rf"\s*([A-Za-z0-9_./-]+)\s*({ops})\s*([-+0-9.eE]+)\s*", text)
        if isinstance(text, str)
        else None
    )
    try:
        if match:
            return match.group(1), match.group(2), float(match.group(3))
    except ValueError:
        pass
    raise ConfigError(
        f"stop condition {text!r} must read '<metric> <op> <number>' with op one of "
        f"{tuple(STOP_OPERATORS)}, e.g. 'accuracy >= 0.9'"
    )


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it (a 10,000-site job.yaml parses in milliseconds, not seconds)."""
_CONFIGS: dict[Path, tuple[tuple[int, int, int], JobConfig]] = {}


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
    clients_per_rank: int | str = "auto"
    """Sites one client rank hosts as virtual clients (a thread each, sharing the rank's process, its one link
    upstream and its one copy of the round's model); 1 = a process per site. 'auto' is resolved before the ranks
    start (see :func:`hpcflare.runtime.client_rank.settle_clients_per_rank`)."""
    client_groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Sites one client rank hosts under a name of its own: {host: [its sites]}, e.g. an institution's virtual
    clients (recipes' ``site_clients={"hospital-a": 4}`` makes hospital-a.1..4). The host's certificate speaks
    for its sites and, where the strategy allows, folds their results into one partial upstream."""
    site_ranks: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """An institution's client ranks at its own site: {site: [client groups]} (set in the copy of the job a site
    agent runs, when the job asks for client_ranks there). The site's relay, named as the site and under its
    certificate, serves them and sends one partial up; without partials each rank reaches the server itself."""
    relay_failover: str = "direct"
    """When a client's relay dies: 'direct' = reconnect to the server, 'exclude' = drop out of the job."""
    staging: bool = False
    """Broadcast models (and take results) through a shared-filesystem directory; gRPC stays the fallback."""
    staging_dir: str = "staging"
    """Staging root: relative to the job dir, or an absolute path on Lustre/GPFS/NFS. Sites that mount it
    elsewhere set HPCFLARE_STAGING_DIR."""
    filters: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """What leaves a site: [{type: exclude|dp_gaussian|quantize, ...}] in order (see hpcflare.filters)."""
    privacy: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Private aggregation on a FedAvg-family strategy: {type: secagg, threshold, neighbours, frac_bits, ...} (the
    server and relays see only masked updates and their sum) or {type: he, ...} (CKKS-encrypted updates; the
    secret key exists only at the sites). See hpcflare.privacy and the README's "Private aggregation"."""
    tracking: list[str] = dataclasses.field(default_factory=lambda: ["csv"])
    """Where sites' metrics and tracking records go: 'csv', 'tensorboard', 'mlflow', 'wandb' (under tracking/)."""
    tracking_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Per receiver options, e.g. {mlflow: {tracking_uri: ..., experiment_name: ...}, wandb: {mode: online}}."""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    """System and job metrics exports, all off by default: {prometheus_port, prometheus_bind, textfile,
    statsd_address, statsd_prefix, site_series_cap} (see :class:`hpcflare.monitoring.MetricsConfig`)."""
    key_metric: str | None = None
    """Metric for best-model selection (models/best_model.safetensors) and early stopping, e.g. 'accuracy'."""
    key_metric_mode: str = "max"
    early_stop_patience: int = 0
    """End the job after this many rounds without a better key_metric (0 = never)."""
    stop_condition: str | None = None
    """End the job once the round's mean metrics satisfy this, e.g. 'accuracy >= 0.9' (NVFlare's stop_cond)."""
    site_train_args: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Per-site script arguments (NVFlare's per_site_config train_args); other sites use train_args."""
    launch_once: bool = True
    """False: the training script runs afresh for every task (one receive/send per run), NVFlare's
    launch_once=False; the site's connection stays up between runs."""
    params_transfer_type: str = "FULL"
    """'DIFF': a FULL result the script sends is turned into its difference to the received model before it
    leaves the site (NVFlare's params_transfer_type); results the script already marks DIFF go as they are."""
    nvflare_compat: str = "auto"
    """'on': ``import nvflare.client`` (and the other NVFlare names client scripts use) resolve to hpcflare in
    client ranks; 'auto': on unless the real nvflare package is importable there; 'off': never."""
    tls: str = "auto"
    """Mutual TLS on every channel: 'on', 'off', or 'auto' (on for Slurm/MPI, off for local/sim runs)."""
    kits_dir: str = "kits"
    """Startup kits (one folder per participant): relative to the job dir, or the output of hpcflare provision."""

    def staging_root(self, job_root: Path) -> Path:
        """Where this job stages models. An absolute staging_dir is shared by many jobs, so each job gets its
        own ``<staging_dir>/<job_id>`` (and cleans only that); HPCFLARE_STAGING_DIR is where this node mounts it."""
        override = os.environ.get("HPCFLARE_STAGING_DIR")
        if Path(self.staging_dir).is_absolute():
            return Path(override or self.staging_dir) / self.job_id
        return Path(override) if override else job_root / self.staging_dir

    def check_staging(self, job_root: Path) -> None:
        """A staging dir must not be the job dir, one of its own folders, or another job's dir."""
        staging = Path(self.staging_dir)
        if not staging.is_absolute():
            if not staging.parts or ".." in staging.parts or staging.parts[0] in RESERVED_DIRS:
                raise ConfigError(
                    f"staging_dir {self.staging_dir!r} must be a new folder inside the job dir (not "
                    f"one of {sorted(RESERVED_DIRS)}, no '..') or an absolute path on a shared filesystem"
                )
            return
        resolved, root = staging.resolve(), job_root.resolve()
        scoped = resolved / self.job_id  # what this job will write to and clean up
        if scoped == root or root in scoped.parents or scoped in root.parents:
            raise ConfigError(
                f"staging_dir {self.staging_dir!r} would put this job's staging files in or around "
                "its own job dir; use a relative folder name or a dedicated shared directory"
            )
        if (resolved / "job.yaml").exists() or any((p / "job.yaml").exists() for p in resolved.parents):
            raise ConfigError(f"staging_dir {self.staging_dir!r} is inside another job's directory")

    def validate(self) -> None:
        """Refuse a config that cannot run (ConfigError naming the field and what it accepts)."""
        validate_config(self)

    def new_strategy(self) -> Any:
        if not isinstance(self.strategy_args, dict):
            raise ConfigError(f"strategy_args must be a mapping, got {self.strategy_args!r}")
        factory = STRATEGIES.get_or_fail(self.strategy)
        try:
            strategy = factory(**self.strategy_args)
        except TypeError as exc:
            raise ConfigError(
                f"strategy {self.strategy!r}: bad strategy_args {self.strategy_args}: {exc}"
            ) from None
        for wrap in STRATEGY_WRAPPERS.values():  # privacy: SecAgg / HE around a FedAvg-family strategy
            strategy = wrap(strategy, self)
        return strategy

    def relay_names(self) -> list[str]:
        return [f"relay-{i}" for i in range(1, self.relays + 1)]

    @property
    def per_rank(self) -> int:
        """Sites per client rank ('auto' never resolved = 1, a process per site)."""
        return self.clients_per_rank if isinstance(self.clients_per_rank, int) else 1

    def grouped(self) -> dict[str, str]:
        """Site -> the client group (host) that runs it, for the sites of ``client_groups``."""
        return {site: host for host, sites in self.client_groups.items() for site in sites}

    def participants(self) -> list[str]:
        """Who takes part, in job.yaml order: each client group once (by its host's name), and the other sites."""
        grouped = self.grouped()
        return list(dict.fromkeys(grouped.get(site, site) for site in self.clients))

    def client_units(self) -> dict[str, list[str]]:
        """The job's client ranks in job.yaml order: name -> the sites it runs. A client group is one rank under
        its host's name; of the other sites, with one site per rank the name is the site's, else 'client-rank-N'."""
        grouped = self.grouped()
        units = {host: list(sites) for host, sites in self.client_groups.items()}
        rest = [site for site in self.clients if site not in grouped]
        k = self.per_rank
        if k == 1:
            return {**units, **{site: [site] for site in rest}}
        return {
            **units,
            **{f"client-rank-{n}": rest[i : i + k] for n, i in enumerate(range(0, len(rest), k), 1)},
        }

    def hosting_rank(self, site: str) -> str | None:
        """The client rank that runs ``site`` as a virtual client (None with one site per rank, or for a name that
        is not a site): the certificate of that rank may speak for it (see :func:`security.jobs.load_kit`)."""
        grouped = self.grouped()
        host = grouped.get(site)
        if host is not None or self.per_rank == 1 or site not in self.clients:
            return host
        rest = [s for s in self.clients if s not in grouped] if grouped else self.clients
        return f"client-rank-{rest.index(site) // self.per_rank + 1}"

    def site_relay_of(self, name: str) -> str | None:
        """The site whose own relay serves client rank ``name`` (see ``site_ranks``), or None."""
        return next((site for site, ranks in self.site_ranks.items() if name in ranks), None)

    def rank_hosts(self) -> dict[str, list[str]]:
        """Client ranks that host their sites behind one link upstream (a rank-local relay), by name.
        Empty with one site per rank, or for strategies that cannot take partial aggregates (their virtual
        clients each keep their own link to the server)."""
        if (self.per_rank == 1 and not self.client_groups) or not self.new_strategy().supports_relays:
            return {}
        return {name: sites for name, sites in self.client_units().items() if name not in sites}

    def load_settings(self) -> Settings:
        return Settings.load(self.settings_profile, self.settings)

    @classmethod
    def from_dict(cls, data: Any, source: str = "job config") -> JobConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]  # type: ignore[misc]
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        try:
            config = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        config.validate()
        return config


def validate_config(config: JobConfig) -> None:
    """Every check of a job config; plugin packages check their own sections (``plugins.CONFIG_CHECKS``)."""
    check_job_name(config.name)
    if not isinstance(config.job_id, str) or not JOB_NAME.match(config.job_id) or ".." in config.job_id:
        raise ConfigError(f"job_id {config.job_id!r} is not a valid directory name")
    whole_number("num_rounds", config.num_rounds, 1)
    whole_number("min_clients", config.min_clients, 1)
    whole_number("relays", config.relays, 0)
    if not isinstance(config.clients, list) or not config.clients:
        raise ConfigError("a job needs at least one client site")
    if not 1 <= config.min_clients <= len(config.clients):
        raise ConfigError(
            f"min_clients={config.min_clients} must be between 1 and the number of clients ({len(config.clients)})"
        )
    for site in config.clients:
        if not SITE_NAME.match(site):
            raise ConfigError(f"invalid site name {site!r}: use letters, digits, '_', '.', '-' (max 64)")
    if len(set(config.clients)) != len(config.clients):
        raise ConfigError("site names must be unique")
    STRATEGIES.get_or_fail(config.strategy)
    strategy = config.new_strategy()
    if config.relays and not strategy.supports_relays:
        raise ConfigError(
            f"strategy {config.strategy!r} addresses single sites or collects whole models: run it "
            "without relays (relays: 0)"
        )
    fraction("min_fraction", config.min_fraction)
    if not 0 <= config.relays <= len(config.clients):
        raise ConfigError(
            f"relays={config.relays} must be between 0 and the number of clients ({len(config.clients)})"
        )
    if config.clients_per_rank != "auto":
        whole_number("clients_per_rank", config.clients_per_rank, 1)
    check_client_groups(config)
    clash = set(config.clients) & (
        {f"relay-{i}" for i in range(1, config.relays + 1)} | set(config.rank_hosts())
    )
    if clash:
        raise ConfigError(
            f"site name(s) {sorted(clash)} are taken by this job's relays or client ranks; rename them"
        )
    if config.relay_failover not in ("direct", "exclude"):
        raise ConfigError(f"relay_failover must be 'direct' or 'exclude', got {config.relay_failover!r}")
    if not isinstance(config.staging, bool):
        raise ConfigError(f"staging must be true or false, got {config.staging!r}")
    for check in CONFIG_CHECKS.values():  # filters, privacy: the packages that implement them check them
        check(config)
    MetricsConfig.from_dict(config.metrics)
    if not isinstance(config.tracking, list) or set(config.tracking) - set(TRACKING_BACKENDS):
        raise ConfigError(f"tracking must be a list of {TRACKING_BACKENDS}, got {config.tracking!r}")
    if (
        not isinstance(config.tracking_config, dict)
        or set(config.tracking_config) - set(TRACKING_BACKENDS)
        or not all(isinstance(v, dict) for v in config.tracking_config.values())
    ):
        raise ConfigError(
            f"tracking_config must map a receiver to its options, got {config.tracking_config!r}"
        )
    if config.stop_condition is not None:
        parse_stop_condition(config.stop_condition)
    if (
        not isinstance(config.site_train_args, dict)
        or set(config.site_train_args) - set(config.clients)
        or not all(
            isinstance(a, list) and all(isinstance(x, str) for x in a)
            for a in config.site_train_args.values()
        )
    ):
        raise ConfigError(
            f"site_train_args must map sites of this job to lists of strings, got {config.site_train_args!r}"
        )
    if not isinstance(config.launch_once, bool):
        raise ConfigError(f"launch_once must be true or false, got {config.launch_once!r}")
    if config.params_transfer_type not in ("FULL", "DIFF"):
        raise ConfigError(
            f"params_transfer_type must be 'FULL' or 'DIFF', got {config.params_transfer_type!r}"
        )
    if config.nvflare_compat not in ("auto", "on", "off"):
        raise ConfigError(f"nvflare_compat must be 'auto', 'on' or 'off', got {config.nvflare_compat!r}")
    if config.key_metric_mode not in ("max", "min"):
        raise ConfigError(f"key_metric_mode must be 'max' or 'min', got {config.key_metric_mode!r}")
    if not isinstance(config.early_stop_patience, int) or config.early_stop_patience < 0:
        raise ConfigError(f"early_stop_patience must be an integer >= 0, got {config.early_stop_patience!r}")
    if config.early_stop_patience and not config.key_metric:
        raise ConfigError("early_stop_patience needs a key_metric to watch")
    if config.tls not in ("auto", "on", "off"):
        raise ConfigError(f"tls must be 'auto', 'on' or 'off', got {config.tls!r}")
    if config.framework not in FRAMEWORKS:
        raise ConfigError(f"framework must be one of {FRAMEWORKS}, got {config.framework!r}")
    config.load_settings()  # raises ConfigError on bad profile/overrides


def check_client_groups(config: JobConfig) -> None:
    groups = config.client_groups
    if not isinstance(groups, dict) or not all(
        isinstance(h, str) and isinstance(v, list) and v and all(isinstance(s, str) for s in v)
        for h, v in groups.items()
    ):
        raise ConfigError(
            f"client_groups must map a host name to a non-empty list of its sites, got {groups!r:.200}"
        )
    named = [site for sites in groups.values() for site in sites]
    unknown = sorted(set(named) - set(config.clients))
    if unknown or len(named) != len(set(named)):
        raise ConfigError(
            f"client_groups: every grouped site must be one of the job's clients, in one group only "
            f"(unknown: {unknown[:10]})"
        )
    for host in groups:
        if not SITE_NAME.match(host) or host in config.clients:
            raise ConfigError(
                f"client_groups: host name {host!r} must be a valid name that is not one of the sites"
            )
    ranks = config.site_ranks
    if not isinstance(ranks, dict) or not all(
        isinstance(v, list) and v and all(r in groups for r in v) for v in ranks.values()
    ):
        raise ConfigError(
            f"site_ranks must map a site to a non-empty list of this job's client groups, got {ranks!r:.200}"
        )


def expand_site_clients(
    clients: list[str], site_clients: dict[str, int]
) -> tuple[list[str], dict[str, list[str]]]:
    """``site_clients={"hospital-a": 4}``: hospital-a's place in ``clients`` becomes its virtual clients
    hospital-a.1..4, run by one client rank named hospital-a; returns (clients, client_groups)."""
    unknown = sorted(set(site_clients) - set(clients))
    if unknown:
        raise ConfigError(f"site_clients names {unknown} that are not among the clients {clients[:10]}")
    out: list[str] = []
    groups: dict[str, list[str]] = {}
    for site in clients:
        count = site_clients.get(site)
        if count is None:
            out.append(site)
            continue
        whole_number(f"site_clients[{site!r}]", count, 1)
        groups[site] = [f"{site}.{i}" for i in range(1, int(count) + 1)]
        out += groups[site]
    return out, groups


class JobDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._secret = ""  # read once: the server checks it at every registration

    config_path = property(lambda self: self.root / "job.yaml")
    app_dir = property(lambda self: self.root / "app")
    models_dir = property(lambda self: self.root / "models")
    log_dir = property(lambda self: self.root / "logs")
    rendezvous_dir = property(lambda self: self.root / "rendezvous")
    status_path = property(lambda self: self.root / "status.json")
    result_model_path = property(lambda self: self.root / "models" / "global_model.safetensors")
    agent_record = property(lambda self: self.root.parent / AGENT_RECORD)
    """A site agent's record of its part of a federation job, beside that job's folder at the site."""

    def site_dir(self, site: str) -> Path:
        if not SITE_NAME.match(site):
            raise ConfigError(f"invalid site name {site!r}")
        return self.root / "sites" / site

    def create(self, config: JobConfig) -> None:
        config.validate()
        config.check_staging(self.root)
        for d in (self.root, self.app_dir, self.models_dir, self.log_dir, self.rendezvous_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.save_config(config)

    def save_config(self, config: JobConfig) -> None:
        """Write job.yaml atomically (ranks that read it meanwhile see the old or the new file, whole)."""
        atomic_write_text(self.config_path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    def load_config(self) -> JobConfig:
        """job.yaml, parsed and validated; cached per file version, so the sites of a client rank (hundreds of
        threads, each reading the config) parse a many-site job.yaml once. Each caller gets its own copy."""
        try:
            stat = self.config_path.stat()
        except FileNotFoundError:
            raise ConfigError(
                f"no job.yaml in {self.root}; is this a job directory? (create one with recipe.export())"
            ) from None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = _CONFIGS.get(self.config_path)
        if cached is None or cached[0] != key:
            try:
                data = yaml.load(self.config_path.read_text(), Loader=SAFE_LOADER)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{self.config_path}: invalid YAML: {exc}") from None
            cached = _CONFIGS[self.config_path] = (key, JobConfig.from_dict(data, str(self.config_path)))
        return dataclasses.replace(cached[1])

    @property
    def secret_path(self) -> Path:
        return self.root / ".job_secret"

    def ensure_secret(self) -> None:
        """Create the job's secret (0600) unless it exists: every rank proves it when registering, so another
        local user who can reach the server's port cannot join or impersonate a site, even without TLS."""
        if self.secret_path.exists():
            return
        tmp = self.root / f".job_secret.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        atomic_write(tmp, secrets.token_hex(32), mode=0o600)
        try:  # link, not rename: of ranks racing to make it, exactly one wins and all read the same secret
            os.link(tmp, self.secret_path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def registration_proof(self, site: str) -> str:
        """HMAC(job secret, site): what a rank sends in its Register request (HPCFLARE_JOB_SECRET overrides
        the job dir's file, for sites that do not share the job directory)."""
        if not self._secret:  # not cached while missing: it may still be created
            self._secret = os.environ.get("HPCFLARE_JOB_SECRET") or _read_secret(self.secret_path)
        secret = self._secret
        return (
            hmac.new(secret.encode(), f"register:{site}".encode(), hashlib.sha256).hexdigest()
            if secret
            else ""
        )

    def check_proof(self, site: str, proof: Any) -> None:
        expected = self.registration_proof(site)
        if not expected or not isinstance(proof, str) or not hmac.compare_digest(expected, proof):
            raise RegistrationRefusedError(
                f"site {site!r:.80} did not prove it belongs to this job (Register needs the site's own "
                f"startup kit, or the HMAC of the job's secret, {self.secret_path.name}); start ranks through "
                "hpcflare, give the site its kit (tls: on), or set HPCFLARE_JOB_SECRET"
            )

    def server_lock(self) -> FileLock:
        """Held by the job's live server for its whole life: a second server or deployment is refused."""
        return FileLock(str(self.root / ".server.lock"))

    def check_deployable(self) -> None:
        """Refuse to start a job dir that a live server is running or that already completed."""
        lock = self.server_lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(
                f"job {self.root.name} is already running (its server holds {lock.lock_file}); wait "
                "for it, abort it, or export a new job"
            ) from None
        lock.release()
        if self.read_status().get("state") == JobState.COMPLETED:
            raise ConfigError(
                f"job {self.root.name} already completed (see {self.status_path}); export a new job "
                "instead of deploying this one again"
            )

    def settle(self, cause: str, exit_code: int | None = None) -> None:
        """Record how a job ended when its server could not (killed, lost): a status that is not final
        becomes 'failed' with ``cause``; a final one is never overwritten."""
        if self.read_status().get("state") not in FINAL_STATES:
            self.write_status(
                JobState.FAILED, message=cause, **({"exit_code": exit_code} if exit_code is not None else {})
            )

    def write_status(self, state: JobState, **fields: Any) -> None:
        atomic_write_text(
            self.status_path,
            json.dumps({"state": str(JobState(state)), "updated": iso_utc(), **fields}, indent=1),
        )

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {"state": JobState.PENDING}
        except ValueError:
            return {"state": JobState.UNKNOWN, "message": f"unreadable {self.status_path}"}


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
