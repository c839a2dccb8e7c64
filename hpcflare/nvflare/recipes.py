"""NVFlare's recipe classes by their names, keywords and defaults, each building the hpcflare recipe it matches.

NVFlare's recipes take keyword arguments only, default ``key_metric="accuracy"`` (best-model selection) and
accept a model as an object, a ``{"path": "module.Class", "args": {...}}`` dict, or (numpy) a list. What the
keywords mean is :mod:`hpcflare.recipe.nvflare_keywords`; what differs is said once on stderr.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

from hpcflare import recipe as hp
from hpcflare.env.api import Env, Run
from hpcflare.errors import ConfigError
from hpcflare.job import JobDir
from hpcflare.nvflare.local_files import local_imports
from hpcflare.recipe.nvflare_keywords import note


def model_from_config(model: Any) -> Any:
    """NVFlare's ``model={"path": "model.Net", "args": {...}}``: the class imported (the job.py's folder is on
    sys.path, as with ``python job.py``) and built; anything else as it is."""
    if not (isinstance(model, dict) and isinstance(model.get("path"), str)):
        return model
    unknown = sorted(set(model) - {"path", "args"})
    if unknown:
        raise ConfigError(f"model config {model!r}: unknown key(s) {unknown}; it takes path and args")
    module_name, _, class_name = model["path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"model config path {model['path']!r} cannot be imported: {exc}") from None
    return cls(**dict(model.get("args") or {}))


def _common(kwargs: dict[str, Any], name: str) -> dict[str, Any]:
    kwargs.setdefault("name", name)
    kwargs.setdefault("key_metric", "accuracy")
    for key in ("model", "initial_model"):
        if key in kwargs:
            kwargs[key] = model_from_config(kwargs[key])
    script = kwargs.get("train_script")
    if script is not None and Path(script).is_file():  # the local modules it imports travel with it
        shipped = {Path(p).resolve() for p in kwargs.get("extra_files", ())}
        kwargs["extra_files"] = [
            *kwargs.get("extra_files", ()),
            *(p for p in local_imports(script) if p not in shipped),
        ]
    framework = kwargs.pop("framework", None)
    if framework is not None:  # the model's own type decides how sites receive params
        note("framework", f"{getattr(framework, 'value', framework)!r}: taken from the model's type")
    return kwargs


class NvflareCalls(hp.Recipe):
    """NVFlare's ``Recipe.export(job_dir, ...)`` and ``Recipe.execute(env, ...)`` signatures."""

    _executing = False

    def export(
        self,
        job_root: str | Path | None = None,
        job_id: str | None = None,
        *,
        job_dir: str | Path | None = None,
        server_exec_params: dict[str, Any] | None = None,
        client_exec_params: dict[str, Any] | None = None,
        env: Any = None,
    ) -> JobDir:
        """NVFlare's ``export(job_dir)``: the job folder ``job_dir/<name>`` (run it with `hpcflare job run`)."""
        _exec_params(server_exec_params, client_exec_params)
        root = job_root if job_root is not None else job_dir
        if root is None:
            raise ConfigError("export needs job_dir=, the folder to write the job into")
        if job_id is None and not self._executing:  # NVFlare's job_dir/<name>, replaced on a new export
            job_id = self.name
            previous = JobDir(Path(root) / job_id)
            if previous.config_path.is_file():
                if previous.read_status().get("state") in ("registration", "running", "resuming"):
                    raise ConfigError(f"{previous.root} is a running job's folder; export elsewhere")
                shutil.rmtree(previous.root)
        return super().export(root, job_id)

    def execute(
        self,
        env: Env,
        server_exec_params: dict[str, Any] | None = None,
        client_exec_params: dict[str, Any] | None = None,
    ) -> Run:
        _exec_params(server_exec_params, client_exec_params)
        self._executing = True  # execute's own export gets a fresh job id
        try:
            return super().execute(env)
        finally:
            self._executing = False


def _exec_params(server: dict[str, Any] | None, client: dict[str, Any] | None) -> None:
    if server or client:
        note("server_exec_params/client_exec_params", "NVFlare's component parameters have no effect here")


class FedAvgRecipe(NvflareCalls, hp.FedAvgRecipe):
    """NVFlare's FedAvgRecipe (PyTorch, TensorFlow and the unified ``nvflare.recipe.fedavg`` one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "fedavg"))


class NumpyFedAvgRecipe(FedAvgRecipe):
    """NVFlare's NumpyFedAvgRecipe: ``model`` a list or array travels as float32 ``numpy_key``."""


class SklearnFedAvgRecipe(FedAvgRecipe):
    """NVFlare's SklearnFedAvgRecipe. NVFlare sends ``model_params`` (the estimator's settings, strings among
    them) as round 1's "model"; hpcflare moves tensors only, so the round-1 model is ``model=`` (the estimator's
    initial arrays) and the settings reach the script as its arguments."""

    def __init__(self, **kwargs: Any) -> None:
        settings = kwargs.pop("model_params", None)
        if settings is not None and kwargs.get("model") is None and kwargs.get("initial_model") is None:
            raise ConfigError(
                "SklearnFedAvgRecipe(model_params=...): hpcflare sends tensors only, not the estimator's settings; "
                "pass model= with its initial arrays (e.g. {'coef': np.zeros((1, n_features)), 'intercept': "
                "np.zeros(1)}) and give the settings to the script in train_args"
            )
        if settings is not None:
            note(
                "SklearnFedAvgRecipe(model_params=...)",
                "the script gets the estimator's settings from train_args",
            )
        super().__init__(**kwargs)


class FedProxRecipe(NvflareCalls, hp.FedAvgRecipe):
    """NVFlare's FedProxRecipe: FedAvg that sends ``fedprox_mu`` (default 0.01) in every training task's meta;
    the sites' scripts add the proximal term (``PTFedProxLoss``)."""

    def __init__(self, *, fedprox_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "fedprox"))
        self.extra_strategy_args["fedprox_mu"] = fedprox_mu


class FedOptRecipe(NvflareCalls, hp.FedOptRecipe):
    """NVFlare's FedOptRecipe: a server optimizer from ``optimizer_args`` ({path: torch.optim.SGD or Adam, args});
    NVFlare's default is SGD with lr 1.0 and momentum 0.6; sites send differences (DIFF)."""

    def __init__(
        self,
        *,
        optimizer_args: dict[str, Any] | None = None,
        lr_scheduler_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if lr_scheduler_args is not None:
            raise ConfigError(
                "lr_scheduler_args: hpcflare's FedOpt has no server learning-rate schedule; set the optimizer's "
                "lr in optimizer_args (a schedule would change the results, so it is not dropped silently)"
            )
        path = str((optimizer_args or {}).get("path", "torch.optim.SGD"))
        args = dict((optimizer_args or {}).get("args") or {})
        kind = path.rpartition(".")[2].lower()
        if kind not in ("sgd", "adam"):
            raise ConfigError(
                f"optimizer_args path {path!r}: hpcflare's FedOpt has SGD (with momentum) and Adam"
            )
        options: dict[str, Any] = {"optimizer": kind, "lr": float(args.pop("lr", 1.0))}
        if kind == "sgd":
            options["momentum"] = float(args.pop("momentum", 0.6))
        else:
            betas = args.pop("betas", (0.9, 0.99))
            options.update(beta1=float(betas[0]), beta2=float(betas[1]), tau=float(args.pop("eps", 1e-3)))
        if args:
            raise ConfigError(f"optimizer_args args {sorted(args)} have no equivalent in hpcflare's FedOpt")
        kwargs.setdefault("params_transfer_type", "DIFF")
        super().__init__(**_common(kwargs, "fedopt"), **options)


class ScaffoldRecipe(NvflareCalls, hp.ScaffoldRecipe):
    """NVFlare's ScaffoldRecipe; sites use ``hpcflare.client.scaffold``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "scaffold"))


class CyclicRecipe(NvflareCalls, hp.CyclicRecipe):
    """NVFlare's CyclicRecipe: ``num_rounds`` passes over the sites in turn."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "cyclic"))


class FedEvalRecipe(NvflareCalls, hp.FedEvalRecipe):
    """NVFlare's FedEvalRecipe: ``eval_script``/``eval_args`` evaluate the model (``eval_ckpt``: its weights) at
    every site."""

    def __init__(
        self,
        *,
        eval_ckpt: str | None = None,
        eval_script: str | None = None,
        eval_args: str = "",
        **kwargs: Any,
    ) -> None:
        if eval_script is not None:
            kwargs.setdefault("train_script", eval_script)
            kwargs.setdefault("train_args", eval_args)
        if eval_ckpt is not None:
            kwargs.setdefault("initial_ckpt", eval_ckpt)
        super().__init__(**_common(kwargs, "fedeval"))


class SwarmLearningRecipe(NvflareCalls, hp.SwarmRecipe):
    """NVFlare's swarm learning recipe: the sites aggregate in turn."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("aggr_clients", None)
        kwargs.pop("train_clients", None)
        super().__init__(**_common(kwargs, "swarm"))


class KMeansFedAvgRecipe(NvflareCalls, hp.KMeansRecipe):
    """NVFlare's KMeansFedAvgRecipe: mini-batch k-means, ``n_clusters`` centres of ``n_features`` values."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("name", "kmeans")
        super().__init__(**kwargs)


__all__ = [
    "CyclicRecipe",
    "FedAvgRecipe",
    "FedEvalRecipe",
    "FedOptRecipe",
    "FedProxRecipe",
    "KMeansFedAvgRecipe",
    "NumpyFedAvgRecipe",
    "ScaffoldRecipe",
    "SklearnFedAvgRecipe",
    "SwarmLearningRecipe",
]
