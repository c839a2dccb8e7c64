"""NVFlare's FedJob API (2.5 / 2.6): ``FedJob``, ``FedAvgJob``, ``ScriptRunner``, the ``FedAvg`` controller,
``PTModel``, built into the hpcflare FedAvg recipe they describe.

    job = FedAvgJob(name="cifar10", n_clients=2, num_rounds=3, initial_model=Net())
    for i in range(2):
        job.to(ScriptRunner(script="client.py", script_args=f"--site {i}"), f"site-{i + 1}")
    job.simulator_run("/tmp/nvflare/jobs/workdir")      # or job.export_job(folder)

A component this API cannot turn into hpcflare's terms (NVFlare's persistors, aggregators, executors) is a
ConfigError naming it, when it is added.
"""

from __future__ import annotations

import enum
import shlex
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.job import JobDir
from hpcflare.nvflare.recipes import FedAvgRecipe
from hpcflare.recipe.nvflare_keywords import note

SERVER = "server"


class FrameworkType(str, enum.Enum):
    RAW = "raw"
    NUMPY = "numpy"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"


class ScriptRunner:
    """The site side: ``script`` with ``script_args``; NVFlare's other keywords as FedAvgRecipe takes them."""

    def __init__(
        self,
        script: str,
        script_args: str = "",
        launch_external_process: bool = False,
        command: str = "python3 -u",
        framework: Any = FrameworkType.PYTORCH,
        server_expected_format: Any = None,
        params_exchange_format: Any = None,
        params_transfer_type: Any = "FULL",
        **kwargs: Any,
    ) -> None:
        self.script, self.script_args = Path(script), script_args
        self.options: dict[str, Any] = {
            "launch_external_process": launch_external_process,
            "command": command,
        }
        self.options["params_transfer_type"] = params_transfer_type
        if server_expected_format is not None:
            self.options["server_expected_format"] = server_expected_format
        for key in ("launch_once", "shutdown_timeout"):
            if key in kwargs:
                self.options[key] = kwargs.pop(key)
        if kwargs:
            note("ScriptRunner(" + ", ".join(sorted(kwargs)) + ")", "accepted; no effect here")


class FedAvg:
    """NVFlare's FedAvg controller: ``num_clients`` (min_clients), ``num_rounds``, and optionally the initial
    model, ``stop_cond``, ``patience``, ``exclude_vars``, ``aggregation_weights``."""

    def __init__(self, *, num_clients: int = 3, num_rounds: int = 5, **kwargs: Any) -> None:
        self.min_clients, self.num_rounds = num_clients, num_rounds
        model, initial = kwargs.pop("model", None), kwargs.pop("initial_model", None)
        self.model = model if model is not None else initial
        self.options = {
            key: kwargs.pop(key)
            for key in ("stop_cond", "patience", "exclude_vars", "aggregation_weights")
            if kwargs.get(key) is not None
        }
        for key in (
            "persistor_id",
            "task_name",
            "start_round",
            "task_check_period",
            "persist_every_n_rounds",
        ):
            kwargs.pop(key, None)
        if kwargs:
            note("FedAvg(" + ", ".join(sorted(kwargs)) + ")", "accepted; no effect here")


class PTModel:
    """NVFlare's PTModel(model): the initial model of a FedJob."""

    def __init__(self, model: Any, **kwargs: Any) -> None:
        self.model = model


def _is_model(obj: Any) -> bool:
    return bool(
        hasattr(obj, "state_dict")
        or hasattr(obj, "get_weights")
        or (isinstance(obj, dict) and obj and not isinstance(next(iter(obj.values())), (str, dict)))
    )


class FedJob:
    """NVFlare's FedJob: components go ``to`` the server or sites; ``export_job`` and ``simulator_run``."""

    def __init__(
        self,
        name: str = "fed_job",
        min_clients: int = 1,
        mandatory_clients: list[str] | None = None,
        key_metric: str = "accuracy",
        **kwargs: Any,
    ) -> None:
        self.name, self.min_clients, self.key_metric = name, min_clients, key_metric
        self.controller: FedAvg | None = None
        self.model: Any = kwargs.pop("initial_model", None)
        self.runners: dict[str, ScriptRunner] = {}
        if mandatory_clients:
            note(
                "mandatory_clients", "every site the job names is waited for (settings.registration_timeout)"
            )
        if kwargs:
            note("FedJob(" + ", ".join(sorted(kwargs)) + ")", "accepted; no effect here")

    def to(self, obj: Any, target: str, id: str | None = None, **kwargs: Any) -> str:
        if target == SERVER:
            return self.to_server(obj, id, **kwargs)
        if not isinstance(obj, ScriptRunner):
            raise ConfigError(
                f"job.to({type(obj).__name__}(...), {target!r}): sites take a ScriptRunner here (hpcflare runs "
                "no NVFlare executors or site components)"
            )
        self.runners[str(target)] = obj
        return id or "executor"

    def to_server(self, obj: Any, id: str | None = None, **kwargs: Any) -> str:
        if isinstance(obj, FedAvg):
            self.controller = obj
            self.model = obj.model if obj.model is not None else self.model
            return id or "controller"
        if isinstance(obj, PTModel):
            obj = obj.model
        if _is_model(obj):
            self.model = obj
            return id or "persistor"
        raise ConfigError(
            f"job.to_server({type(obj).__name__}(...)): the server takes the FedAvg controller and the initial "
            "model here (hpcflare's server is not configured with NVFlare components)"
        )

    def to_clients(self, obj: Any, id: str | None = None, **kwargs: Any) -> str:
        return self.to(obj, "*", id, **kwargs)

    def recipe(self, n_clients: int | None = None, clients: list[str] | None = None) -> FedAvgRecipe:
        """The hpcflare recipe this job describes, for ``n_clients`` sites (site-1..) unless it names its own."""
        if self.controller is None:
            raise ConfigError(
                "the job has no controller: job.to_server(FedAvg(num_clients=..., num_rounds=...))"
            )
        if self.model is None:
            raise ConfigError(
                "the job has no initial model: job.to_server(model) (sites starting from weights of their own "
                "is not how hpcflare's FedAvg starts)"
            )
        named = sorted(s for s in self.runners if s != "*")
        sites = (
            clients
            or named
            or [f"site-{i}" for i in range(1, (n_clients or self.controller.min_clients) + 1)]
        )
        found = {s: self.runners.get(s) or self.runners.get("*") for s in sites}
        missing = [s for s, r in found.items() if r is None]
        if missing:
            raise ConfigError(f"site(s) {missing} have no ScriptRunner: job.to(ScriptRunner(...), site)")
        runners = {s: r for s, r in found.items() if r is not None}
        scripts = {r.script.resolve() for r in runners.values()}
        if len(scripts) != 1:
            raise ConfigError(
                f"the sites run different scripts {sorted(str(s) for s in scripts)}: hpcflare runs one script "
                "(branch on flare.get_site_name() inside it)"
            )
        (script,) = scripts
        first = next(iter(runners.values()))
        args = {s: r.script_args for s, r in runners.items()}
        site_args = {s: shlex.split(a) for s, a in args.items()} if len(set(args.values())) > 1 else {}
        options: dict[str, Any] = {**first.options, **self.controller.options}
        if site_args:
            options["site_train_args"] = site_args
        return FedAvgRecipe(
            name=self.name,
            initial_model=self.model,
            min_clients=min(self.controller.min_clients, len(sites)),
            num_rounds=self.controller.num_rounds,
            train_script=script,
            train_args=first.script_args if not site_args else "",
            clients=sites,
            key_metric=self.key_metric,
            **options,
        )

    def export_job(self, job_root: str) -> str:
        """Write the job folder ``job_root/<name>`` (run it with ``hpcflare job run``)."""
        job_dir: JobDir = self.recipe().export(job_dir=job_root)  # job_root/<name>, replaced as NVFlare does
        print(f"[hpcflare] job exported to {job_dir.root}; run it with `hpcflare job run {job_dir.root}`")
        return str(job_dir.root)

    def simulator_run(
        self,
        workspace: str,
        n_clients: int | None = None,
        threads: int | None = None,
        gpu: str | None = None,
        clients: list[str] | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Run the job with every site a process of its own under ``workspace`` and wait for it; returns the
        job's workspace (None when it did not complete, with the cause printed)."""
        from hpcflare.nvflare.envs import SimEnv

        if gpu is not None:
            note("simulator_run(gpu=...)", "sites select their GPUs (CUDA_VISIBLE_DEVICES)")
        recipe = self.recipe(n_clients, clients)
        run = recipe.execute(SimEnv(clients=recipe.clients, num_threads=threads, workspace_root=workspace))
        result = run.get_result()
        return None if result is None else str(result)


class BaseFedJob(FedJob):
    """NVFlare's BaseFedJob (FedJob with the model selector and event conversion hpcflare always has)."""


class FedAvgJob(BaseFedJob):
    """NVFlare's FedAvgJob(initial_model, n_clients, num_rounds): a FedJob with its FedAvg controller."""

    def __init__(
        self,
        initial_model: Any,
        n_clients: int,
        num_rounds: int,
        name: str = "fed_job",
        min_clients: int | None = None,
        key_metric: str = "accuracy",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, min_clients=min_clients or n_clients, key_metric=key_metric, **kwargs)
        self.to_server(FedAvg(num_clients=min_clients or n_clients, num_rounds=num_rounds))
        self.to_server(initial_model)


__all__ = ["BaseFedJob", "FedAvg", "FedAvgJob", "FedJob", "FrameworkType", "PTModel", "ScriptRunner"]
