"""Recipe contract: export a self-contained job directory; execute it in an Env."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import secrets
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hpcflare.errors import ConfigError
from hpcflare.job import JobConfig, JobDir, check_job_name, fraction, whole_number
from hpcflare.recipe.model_io import save_initial_model
from hpcflare.settings import Settings

if TYPE_CHECKING:
    from hpcflare.env.api import Env, Run


LARGE_JOB_CLIENTS = 64
"""settings_profile='auto' (the default) picks configs/hpc-large.yaml from this many clients on, else dev."""


class Recipe:
    strategy = "fedavg"
    strategy_args: dict[str, Any] = {}
    """Set by algorithm recipes from their own keyword arguments (FedOptRecipe(lr=...))."""

    def __init__(self, name: str, model: Any, min_clients: int, num_rounds: int, train_script: str | Path,
                 train_args: str | Sequence[str] = "", n_clients: int | None = None,
                 clients: Sequence[str] | None = None, settings_profile: str = "auto",
                 settings: dict[str, Any] | None = None, extra_files: Sequence[str | Path] = (),
                 staging: bool = False, staging_dir: str | Path = "staging", relays: int = 0,
                 relay_failover: str = "direct", min_fraction: float = 0.0, tls: str = "auto",
                 kits_dir: str | Path = "kits", filters: Sequence[dict[str, Any]] = (),
                 initial_checkpoint: str | Path | None = None, **job_options: Any) -> None:
        """``job_options``: any further job.yaml key (key_metric="accuracy", early_stop_patience=3,
        tracking=["csv", "tensorboard"], ...). ``initial_checkpoint``: a .safetensors (or weights-only .pt)
        file whose weights replace the model's initial ones."""
        self.name, self.model = check_job_name(name), model
        self.min_clients = whole_number("min_clients", min_clients, 1)
        self.num_rounds = whole_number("num_rounds", num_rounds, 1)
        self.train_script = Path(train_script)
        self.train_args = shlex.split(train_args) if isinstance(train_args, str) else list(train_args)
        if clients is None:
            clients = [f"site-{i}" for i in range(1, (n_clients or min_clients) + 1)]
        elif n_clients is not None and n_clients != len(clients):
            raise ConfigError(f"n_clients={n_clients} but {len(clients)} client names were given")
        self.clients = list(clients)
        if settings_profile == "auto":  # the deadlines a job of this size needs
            settings_profile = "hpc-large" if len(self.clients) >= LARGE_JOB_CLIENTS else "dev"
        self.settings_profile, self.settings = settings_profile, dict(settings or {})
        self.extra_files = [Path(p) for p in extra_files]
        self.staging, self.staging_dir = bool(staging), str(staging_dir)
        self.relays, self.relay_failover, self.min_fraction = whole_number("relays", relays, 0), relay_failover, fraction("min_fraction", min_fraction)
        self.tls, self.kits_dir = tls, str(kits_dir)
        self.filters = [dict(f) for f in filters]
        known = {f.name for f in dataclasses.fields(JobConfig)}
        unknown = sorted(set(job_options) - known)
        if unknown:
            raise ConfigError(f"unknown recipe option(s) {unknown}; job options are {sorted(known)}")
        self.job_options = job_options
        self.initial_checkpoint = Path(initial_checkpoint) if initial_checkpoint else None
        if not self.train_script.is_file():
            raise ConfigError(f"train_script {self.train_script} not found")
        Settings.load(self.settings_profile, self.settings)  # a bad deadline is refused now, not in a rank

    def new_job_id(self) -> str:
        return f"{self.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

    def export(self, job_root: str | Path, job_id: str | None = None) -> JobDir:
        """Write the job directory (config, app/, initial model) without running anything."""
        job_id = job_id or self.new_job_id()
        job_dir = JobDir(Path(job_root) / job_id)
        app = job_dir.app_dir
        app.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.train_script, app / self.train_script.name)
        for extra in self.extra_files:
            (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, app / extra.name)
        job_dir.models_dir.mkdir(parents=True, exist_ok=True)
        framework = save_initial_model(self.model, job_dir.models_dir / "initial_model.safetensors",
                                       self.initial_checkpoint)
        config = JobConfig(name=self.name, job_id=job_id, num_rounds=self.num_rounds, min_clients=self.min_clients,
                           clients=self.clients, train_script=f"app/{self.train_script.name}",
                           train_args=self.train_args, strategy=self.strategy,
                           strategy_args=dict(self.strategy_args), framework=framework,
                           settings_profile=self.settings_profile, settings=self.settings,
                           staging=self.staging, staging_dir=self.staging_dir, relays=self.relays,
                           relay_failover=self.relay_failover, min_fraction=self.min_fraction, tls=self.tls,
                           kits_dir=self.kits_dir, filters=self.filters, **self.job_options)
        job_dir.create(config)
        return job_dir

    def execute(self, env: "Env") -> "Run":
        return env.deploy(self.export(env.job_root))
