"""Recipe contract: export a self-contained job directory; execute it in an Env."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import secrets
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcflare.errors import ConfigError
from hpcflare.job import (
    TRACKING_BACKENDS,
    JobConfig,
    JobDir,
    check_job_name,
    expand_site_clients,
    fraction,
    whole_number,
)
from hpcflare.recipe.model_io import save_initial_model
from hpcflare.recipe.nvflare_keywords import note, per_site_arguments, translate
from hpcflare.settings import Settings

if TYPE_CHECKING:
    from hpcflare.env.api import Env, Run


LARGE_JOB_CLIENTS = 64
"""settings_profile='auto' (the default) picks configs/hpc-large.yaml from this many clients on, else dev."""


class Recipe:
    strategy = "fedavg"
    strategy_args: dict[str, Any] = {}
    """Set by algorithm recipes from their own keyword arguments (FedOptRecipe(lr=...))."""

    def __init__(
        self,
        name: str = "fedavg",
        model: Any = None,
        min_clients: int | None = None,
        num_rounds: int = 2,
        train_script: str | Path | None = None,
        train_args: str | Sequence[str] = "",
        n_clients: int | None = None,
        clients: Sequence[str] | None = None,
        settings_profile: str = "auto",
        settings: dict[str, Any] | None = None,
        extra_files: Sequence[str | Path] = (),
        staging: bool = False,
        staging_dir: str | Path = "staging",
        relays: int = 0,
        relay_failover: str = "direct",
        min_fraction: float = 0.0,
        tls: str = "auto",
        kits_dir: str | Path = "kits",
        filters: Sequence[dict[str, Any]] = (),
        initial_checkpoint: str | Path | None = None,
        site_clients: dict[str, int] | None = None,
        **job_options: Any,
    ) -> None:
        """``job_options``: any further job.yaml key (key_metric="accuracy", early_stop_patience=3,
        tracking=["csv", "tensorboard"], ...). ``initial_checkpoint``: a .safetensors (or weights-only .pt)
        file whose weights replace the model's initial ones. NVFlare's keywords (initial_model, initial_ckpt,
        stop_cond, patience, exclude_vars, aggregation_weights, per_site_config, ...) are accepted with their
        meaning: see hpcflare.recipe.nvflare_keywords. ``site_clients``: {site: N} runs that site as N virtual
        clients (site.1..N) in one client rank named after the site, which folds their results into one partial
        (an institution's many clients behind one link, across institutions too)."""
        if min_clients is None or train_script is None:
            raise ConfigError("a recipe needs min_clients= and train_script=")
        nv = translate(model, initial_checkpoint, clients, job_options)
        model, initial_checkpoint, clients = nv["model"], nv["initial_checkpoint"], nv["clients"]
        if model is None:
            raise ConfigError("a recipe needs the initial model: model= (or NVFlare's initial_model=)")
        if "site_train_args" in nv:
            job_options["site_train_args"] = nv["site_train_args"]
        self.extra_strategy_args: dict[str, Any] = nv["strategy_args"]
        self.cross_site_eval: bool | str = False
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
        self.relays, self.relay_failover, self.min_fraction = (
            whole_number("relays", relays, 0),
            relay_failover,
            fraction("min_fraction", min_fraction),
        )
        self.tls, self.kits_dir = tls, str(kits_dir)
        self.filters = [dict(f) for f in filters] + nv["filters"]
        known = {f.name for f in dataclasses.fields(JobConfig)}
        unknown = sorted(set(job_options) - known)
        if unknown:
            raise ConfigError(f"unknown recipe option(s) {unknown}; job options are {sorted(known)}")
        self.job_options = job_options
        self.initial_checkpoint = Path(initial_checkpoint) if initial_checkpoint else None
        self.site_clients = dict(site_clients or {})
        if not self.train_script.is_file():
            raise ConfigError(f"train_script {self.train_script} not found")
        Settings.load(self.settings_profile, self.settings)  # a bad deadline is refused now, not in a rank

    def add_client_file(self, file_path: str | Path, clients: Sequence[str] | None = None) -> None:
        """NVFlare's: ship a file or folder with the app (beside the training script, in every site's app/)."""
        path = Path(file_path)
        if not path.exists():
            raise ConfigError(f"add_client_file: {path} not found")
        if clients is not None:
            note("add_client_file(clients=...)", "every site gets the whole app/ folder")
        self.extra_files.append(path)

    def set_per_site_config(self, config: dict[str, dict[str, Any]]) -> None:
        """NVFlare's: {site: {train_args: ...}} names the sites and their script arguments."""
        nv = per_site_arguments(config, None, self.job_options)
        self.clients = nv["clients"]
        self.job_options["site_train_args"] = nv["site_train_args"]

    def enable_log_streaming(self) -> None:
        """NVFlare's: hpcflare already keeps every site's log in the job's logs/ folder."""
        note(
            "enable_log_streaming()",
            "every site's log is already in the job's logs/ folder (across institutions, site.yaml's send_logs "
            "decides whether it comes back)",
        )

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
        framework = save_initial_model(
            self.model, job_dir.models_dir / "initial_model.safetensors", self.initial_checkpoint
        )
        strategy, strategy_args, num_rounds = (
            self.strategy,
            {**self.strategy_args, **self.extra_strategy_args},
            self.num_rounds,
        )
        clients, groups = expand_site_clients(self.clients, self.site_clients)
        options = {**self.job_options, **({"client_groups": groups} if groups else {})}
        if (
            self.cross_site_eval
        ):  # the training rounds, then the evaluation matrix (or the global model's row)
            submit = self.cross_site_eval != GLOBAL_ONLY
            strategy = "cross_site_eval"
            strategy_args = {**strategy_args, "train_rounds": self.num_rounds, "submit_models": submit}
            num_rounds = self.num_rounds + 1 + (len(clients) if submit else 0) + 1
        config = JobConfig(
            name=self.name,
            job_id=job_id,
            num_rounds=num_rounds,
            min_clients=self.min_clients,
            clients=clients,
            train_script=f"app/{self.train_script.name}",
            train_args=self.train_args,
            strategy=strategy,
            strategy_args=strategy_args,
            framework=framework,
            settings_profile=self.settings_profile,
            settings=self.settings,
            staging=self.staging,
            staging_dir=self.staging_dir,
            relays=self.relays,
            relay_failover=self.relay_failover,
            min_fraction=self.min_fraction,
            tls=self.tls,
            kits_dir=self.kits_dir,
            filters=self.filters,
            **options,
        )
        job_dir.create(config)
        return job_dir

    def execute(self, env: Env) -> Run:
        sites = getattr(env, "sites", None)
        if (
            sites is not None
        ):  # SimEnv(num_clients=...) / PocEnv(clients=[...]) choose the sites, as in NVFlare
            if len(sites) < self.min_clients:
                raise ConfigError(
                    f"the env runs {len(sites)} client(s) but the recipe needs min_clients={self.min_clients}"
                )
            self.clients = list(sites)
        return env.deploy(self.export(env.job_root))


TRACKING_TYPES = tuple(b for b in TRACKING_BACKENDS if b != "csv")  # csv is always on
GLOBAL_ONLY = "global"
"""Recipe.cross_site_eval for add_final_global_evaluation: only the global model is evaluated."""


def add_experiment_tracking(
    recipe: Recipe,
    tracking_type: str,
    tracking_config: dict[str, Any] | None = None,
    client_side: bool = False,
    server_side: bool = True,
    clients: Sequence[str] | None = None,
) -> None:
    """NVFlare's ``add_experiment_tracking(recipe, "tensorboard"|"mlflow"|"wandb")``: the server writes every
    site's metrics and tracking records there too (CSV is always on). ``tracking_config``: the receiver's
    options (tensorboard: tb_folder; mlflow: tracking_uri, experiment_name, tags; wandb: project, mode, entity,
    group, tags), or NVFlare's shapes of them (mlflow ``kw_args``, wandb ``wandb_args``). ``client_side``: the
    records are still written by the server, one run or folder per site (said once on stderr)."""
    if tracking_type not in TRACKING_TYPES:
        raise ConfigError(f"tracking_type must be one of {TRACKING_TYPES}, got {tracking_type!r}")
    if not (client_side or server_side):
        raise ConfigError("add_experiment_tracking: at least one of server_side or client_side must be True")
    if clients is not None and not client_side:
        raise ConfigError(
            "add_experiment_tracking: clients= is for client-side tracking; set client_side=True"
        )
    if client_side:
        note(
            "add_experiment_tracking(client_side=True)",
            f"the server writes each site's {tracking_type} records (one run or folder per site); sites "
            "write none of their own",
        )
    tracking = list(recipe.job_options.get("tracking", ["csv"]))
    recipe.job_options["tracking"] = tracking + ([tracking_type] if tracking_type not in tracking else [])
    if tracking_config:
        options = dict(recipe.job_options.get("tracking_config", {}))
        ours = nvflare_tracking_options(tracking_type, dict(tracking_config))
        options[tracking_type] = {**options.get(tracking_type, {}), **ours}
        recipe.job_options["tracking_config"] = options


def nvflare_tracking_options(tracking_type: str, config: dict[str, Any]) -> dict[str, Any]:
    """NVFlare's receiver arguments as hpcflare's receiver options (ours pass through unchanged)."""
    config.pop("events", None)  # NVFlare's event routing: every record reaches hpcflare's server anyway
    nested = config.pop("kw_args" if tracking_type == "mlflow" else "wandb_args", None) or {}
    if not isinstance(nested, dict):
        raise ConfigError(f"tracking_config for {tracking_type}: kw_args / wandb_args must be a dict")
    tags = {**dict(nested.pop("experiment_tags", None) or {}), **dict(nested.pop("run_tags", None) or {})}
    if "artifact_location" in config:
        note("tracking_config.artifact_location", "MLflow artifacts go under the job's tracking/mlruns")
        config.pop("artifact_location")
    for name in ("run_name", "name"):
        if name in nested:
            note(f"tracking_config {name}", "runs are named after their site")
            nested.pop(name)
    if tags:
        config["tags"] = {**tags, **dict(config.get("tags") or {})}
    return {**nested, **config}


def add_final_global_evaluation(recipe: Recipe, participating_clients: Sequence[str] | None = None) -> None:
    """NVFlare's: after training, every site evaluates the final global model (flare.is_evaluate() tasks);
    the metrics are ``cross_site/matrix.json``'s ``global`` row."""
    add_cross_site_evaluation(recipe)
    if participating_clients is not None:
        note("add_final_global_evaluation(participating_clients=...)", "every site of the job evaluates")
    recipe.cross_site_eval = GLOBAL_ONLY


def add_cross_site_evaluation(recipe: Recipe) -> None:
    """NVFlare's ``add_cross_site_evaluation(recipe)``: after training, every site's model and the global one
    are evaluated at every site (flare.is_submit_model() / flare.is_evaluate() tasks); the matrix is in
    cross_site/matrix.json. For FedAvg recipes."""
    if recipe.strategy != "fedavg":
        raise ConfigError(
            f"add_cross_site_evaluation works on FedAvg recipes, not {type(recipe).__name__}; use "
            "CrossSiteEvalRecipe"
        )
    if recipe.relays:
        raise ConfigError("cross-site evaluation addresses single sites: use relays=0")
    if recipe.cross_site_eval:
        raise ConfigError("cross-site (or final global) evaluation is already added to this recipe")
    recipe.cross_site_eval = True
