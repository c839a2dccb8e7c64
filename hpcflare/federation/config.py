"""server.yaml (a standing server) and site.yaml (a site agent): what each institution decides for itself.

server.yaml::

    port: 8002                      # the one port sites and admins connect to
    job_routing: proxy              # sites reach each job's server rank through that port (or: ports)
    job_ports: [8003, 8099]         # ports the jobs' server ranks listen on (open them too with ports)
    workspace: fed-server           # job store and audit log
    launcher: local                 # or slurm: each job's server rank is an sbatch job
    slurm: {partition: service, account: fl, time_minutes: 1440}
    settings_profile: production    # deadlines (site_join_timeout, federation_*); settings: {key: value}
    metrics: {prometheus_port: 9464}  # the standing server's metrics (jobs by state, sites, audited actions)

site.yaml::

    workspace: site-1-work          # the site's job folders and audit log
    launcher: slurm                 # local (processes here) or slurm (the site's own cluster)
    slurm: {partition: gpu, account: hospital-a, qos: normal, gres: "gpu:1", time_minutes: 240}
    data_root: /data/hospital-a     # substituted for {data_root} in the job's train_args
    client_ranks: 1                 # client ranks for a job's virtual clients here, unless it asks (resource_spec)
    staging_dir: /lustre/fl-staging # the site's shared filesystem: its relay stages each round's model there
    max_client_ranks: 1             # limits a job may ask for (resource_spec), refused beyond them
    max_gpus: 4
    max_wall_minutes: 1440
    partitions: [gpu]               # partitions / accounts a job may ask for (absent: only the defaults)
    accounts: [hospital-a]
    send_logs: true                 # the site's logs go back with the job's results
    allowed_scripts: []             # sha256 of extra training scripts this site runs (the kit's policy too)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from hpcflare.errors import ConfigError
from hpcflare.federation.launchers import LAUNCHERS, Resources
from hpcflare.monitoring import MetricsConfig
from hpcflare.settings import Settings

DEFAULT_PORT = 8002
"""The standing server's port when neither --port nor server.yaml names one."""
ROUTINGS = ("proxy", "ports")
"""How sites reach a job's server rank (server.yaml job_routing)."""


def _read(path: str | Path | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return data


def _checked(
    cls: type, path: str | Path | None, what: str, overrides: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The file's mapping with the command line's overrides: only known keys, a known launcher."""
    data = _read(path, what)
    data.update({k: v for k, v in overrides.items() if v is not None})
    where = str(path or what)
    known = {f.name for f in dataclasses.fields(cls)} | {"settings_profile"}
    if set(data) - known:
        raise ConfigError(f"{where}: unknown key(s) {sorted(set(data) - known)}")
    if data.get("launcher", "local") not in LAUNCHERS:
        raise ConfigError(f"{where}: launcher must be one of {sorted(LAUNCHERS)}, got {data['launcher']!r}")
    return data, where


def resources_from(data: Any, where: str) -> Resources:
    if data is None:
        return Resources()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping (partition, account, qos, gres, time_minutes, extra)")
    unknown = set(data) - {f.name for f in dataclasses.fields(Resources)}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    res = Resources(**data)
    for key in ("partition", "account", "qos", "gres"):
        value = getattr(res, key)
        if value is not None and (
            not isinstance(value, str) or not value or any(c in value for c in " \n;'\"")
        ):
            raise ConfigError(f"{where}: {key} must be a plain word, got {value!r}")
    if res.time_minutes is not None and (not isinstance(res.time_minutes, int) or res.time_minutes < 1):
        raise ConfigError(f"{where}: time_minutes must be a whole number >= 1")
    if not isinstance(res.extra, list) or not all(
        isinstance(e, str) and e.startswith("--") for e in res.extra
    ):
        raise ConfigError(f"{where}: extra must be a list of sbatch options such as --mem=32G")
    return res


def _settings(data: dict[str, Any], where: str) -> Settings:
    overrides = data.get("settings") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: settings must be a mapping")
    return Settings.load(str(data.get("settings_profile") or "production"), overrides)


@dataclasses.dataclass
class ServerConfig:
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    job_ports: tuple[int, int] = (DEFAULT_PORT + 1, DEFAULT_PORT + 97)
    job_routing: str = "proxy"
    """'proxy': sites reach a job's server rank through the standing server's port (federation.job_proxy), and
    a local server rank listens on loopback only; 'ports': sites connect to the job's port themselves."""
    workspace: Path = Path("fed-server")
    launcher: str = "local"
    slurm: Resources = dataclasses.field(default_factory=Resources)
    settings: Settings = dataclasses.field(default_factory=Settings)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)

    @classmethod
    def load(cls, path: str | Path | None, **overrides: Any) -> ServerConfig:
        data, where = _checked(cls, path, "server config", overrides)
        port = data.get("port", DEFAULT_PORT)
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"{where}: port must be 0..65535, got {port!r}")
        ports = data.get("job_ports") or [port + 1, port + 97]
        if (
            not isinstance(ports, list | tuple)
            or len(ports) != 2
            or not all(isinstance(p, int) and 0 < p < 65536 for p in ports)
            or ports[0] > ports[1]
        ):
            raise ConfigError(f"{where}: job_ports must be [first, last] ports, got {ports!r}")
        launcher = data.get("launcher", "local")
        routing = data.get("job_routing", "proxy")
        if routing not in ROUTINGS:
            raise ConfigError(f"{where}: job_routing must be one of {ROUTINGS}, got {routing!r}")
        return cls(
            port=port,
            host=str(data.get("host", "0.0.0.0")),
            job_ports=(int(ports[0]), int(ports[1])),
            job_routing=routing,
            workspace=Path(data.get("workspace") or "fed-server"),
            launcher=launcher,
            slurm=resources_from(data.get("slurm"), f"{where}: slurm"),
            settings=_settings(data, where),
            metrics=MetricsConfig.from_dict(data.get("metrics"), f"{where}: metrics"),
        )


DEFAULT_MAX_CLIENTS = 16
"""site.yaml's max_clients when it sets none."""


@dataclasses.dataclass
class SiteConfig:
    workspace: Path = Path("site-work")
    launcher: str = "local"
    slurm: Resources = dataclasses.field(default_factory=Resources)
    data_root: str | None = None
    client_ranks: int = 1
    """Client ranks this site runs a job's virtual clients on (behind a relay of its own) when the job's
    resource_spec asks for none."""
    staging_dir: str | None = None
    """A directory on the site's shared filesystem: with several client ranks, the site's relay stages each
    round's model there (a folder per job), and the ranks read it from there once per node."""
    max_client_ranks: int = 1
    max_clients: int = DEFAULT_MAX_CLIENTS
    """Virtual clients one job may run at this site (a job's site_clients), in its one client rank."""
    max_gpus: int | None = None
    max_wall_minutes: int | None = None
    partitions: list[str] | None = None
    accounts: list[str] | None = None
    send_logs: bool = True
    allowed_scripts: list[str] = dataclasses.field(default_factory=list)
    settings: Settings = dataclasses.field(default_factory=Settings)

    @classmethod
    def load(cls, path: str | Path | None, **overrides: Any) -> SiteConfig:
        data, where = _checked(cls, path, "site config", overrides)
        launcher = data.get("launcher", "local")
        for key in ("client_ranks", "max_client_ranks", "max_clients", "max_gpus", "max_wall_minutes"):
            value = data.get(key)
            optional = key in ("max_gpus", "max_wall_minutes")  # absent or null: no limit
            if (value is not None or (key in data and not optional)) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
        for key in ("partitions", "accounts", "allowed_scripts"):
            value = data.get(key)
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            ):
                raise ConfigError(f"{where}: {key} must be a list of names")
        if data.get("client_ranks", 1) < 1 or data.get("client_ranks", 1) > data.get("max_client_ranks", 1):
            raise ConfigError(f"{where}: client_ranks must be between 1 and max_client_ranks")
        staging = data.get("staging_dir")
        if staging is not None and (not isinstance(staging, str) or not Path(staging).is_absolute()):
            raise ConfigError(f"{where}: staging_dir must be an absolute path, got {staging!r}")
        if not isinstance(data.get("send_logs", True), bool):
            raise ConfigError(f"{where}: send_logs must be true or false")
        return cls(
            workspace=Path(data.get("workspace") or "site-work"),
            launcher=launcher,
            slurm=resources_from(data.get("slurm"), f"{where}: slurm"),
            data_root=None if data.get("data_root") is None else str(data["data_root"]),
            client_ranks=int(data.get("client_ranks", 1)),
            staging_dir=staging,
            max_client_ranks=int(data.get("max_client_ranks", 1)),
            max_clients=int(data.get("max_clients", DEFAULT_MAX_CLIENTS)),
            max_gpus=data.get("max_gpus"),
            max_wall_minutes=data.get("max_wall_minutes"),
            partitions=data.get("partitions"),
            accounts=data.get("accounts"),
            send_logs=bool(data.get("send_logs", True)),
            allowed_scripts=list(data.get("allowed_scripts") or []),
            settings=_settings(data, where),
        )
