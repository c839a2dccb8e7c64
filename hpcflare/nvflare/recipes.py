"""NVFlare's recipe classes by their names, keywords and defaults, each building the hpcflare recipe it matches.

NVFlare's recipes take keyword arguments only, default ``key_metric="accuracy"`` (best-model selection) and
accept a model as an object, a ``{"path": "module.Class", "args": {...}}`` dict, or (numpy) a list. What the
keywords mean is :mod:`hpcflare.recipe.nvflare_keywords`; what differs is said once on stderr.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from hpcflare import recipe as hp
from hpcflare.errors import ConfigError
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


class FedAvgRecipe(hp.FedAvgRecipe):
    """NVFlare's FedAvgRecipe (PyTorch, TensorFlow and the unified ``nvflare.recipe.fedavg`` one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "fedavg"))


class NumpyFedAvgRecipe(FedAvgRecipe):
    """NVFlare's NumpyFedAvgRecipe: ``model`` a list or array travels as float32 ``numpy_key``."""


class SklearnFedAvgRecipe(FedAvgRecipe):
    """NVFlare's SklearnFedAvgRecipe: ``model_params`` (the estimator's parameters) is the initial model."""

    def __init__(self, **kwargs: Any) -> None:
        if "model_params" in kwargs:
            kwargs.setdefault("model", kwargs.pop("model_params"))
        super().__init__(**kwargs)


class FedProxRecipe(hp.FedAvgRecipe):
    """NVFlare's FedProxRecipe: FedAvg that sends ``fedprox_mu`` (default 0.01) in every training task's meta;
    the sites' scripts add the proximal term (``PTFedProxLoss``)."""

    def __init__(self, *, fedprox_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "fedprox"))
        self.extra_strategy_args["fedprox_mu"] = fedprox_mu


class FedOptRecipe(hp.FedOptRecipe):
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


class ScaffoldRecipe(hp.ScaffoldRecipe):
    """NVFlare's ScaffoldRecipe; sites use ``hpcflare.client.scaffold``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "scaffold"))


class CyclicRecipe(hp.CyclicRecipe):
    """NVFlare's CyclicRecipe: ``num_rounds`` passes over the sites in turn."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_common(kwargs, "cyclic"))


class FedEvalRecipe(hp.FedEvalRecipe):
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


class SwarmLearningRecipe(hp.SwarmRecipe):
    """NVFlare's swarm learning recipe: the sites aggregate in turn."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("aggr_clients", None)
        kwargs.pop("train_clients", None)
        super().__init__(**_common(kwargs, "swarm"))


class KMeansFedAvgRecipe(hp.KMeansRecipe):
    """NVFlare's KMeansFedAvgRecipe: mini-batch k-means, ``n_clusters`` centres of ``n_features`` values."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("name", "kmeans")
        super().__init__(**kwargs)


class XGBBaggingRecipe(hp.XGBBaggingRecipe):
    """NVFlare's XGBBaggingRecipe (tree-based bagging)."""


class XGBHistogramRecipe(hp.XGBHistogramRecipe):
    """NVFlare's histogram-based horizontal XGBoost recipe."""


class XGBVerticalRecipe(hp.XGBVerticalRecipe):
    """NVFlare's vertical XGBoost recipe."""


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
    "XGBBaggingRecipe",
    "XGBHistogramRecipe",
    "XGBVerticalRecipe",
]
