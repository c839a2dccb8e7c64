"""NVFlare's XGBoost recipes with NVFlare's keywords: ``XGBHorizontalRecipe``, ``XGBVerticalRecipe`` and
``XGBBaggingRecipe`` built from ``per_site_config={site: {"data_loader": loader, ...}}``.

NVFlare trains with its own executor; here a generated site script does the same through hpcflare's XGBoost
collective (:func:`hpcflare.client.xgb_loaders.run_site`): each site's loader is rebuilt at that site from its
class and kept arguments (the class's file ships with the job unless hpcflare provides it, as CSVDataLoader).
Given ``train_script=`` instead, the classes are hpcflare's own recipes under NVFlare's names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcflare import recipe as hp
from hpcflare.errors import ConfigError
from hpcflare.job import whole_number
from hpcflare.nvflare.local_files import object_spec, scratch_folder, shipped
from hpcflare.nvflare.recipes import NvflareCalls
from hpcflare.recipe.nvflare_keywords import note

SITE_SCRIPT = '''"""A site of an NVFlare-shaped XGBoost job: its data loader, rebuilt from the job's description of it."""
import json
from pathlib import Path

from hpcflare.client.xgb_loaders import run_site

run_site(json.loads((Path(__file__).parent / "xgb_job.json").read_text()))
'''
DEFAULT_XGB_PARAMS = {
    "max_depth": 8,
    "eta": 0.1,
    "objective": "binary:logistic",
    "eval_metric": "auc",
    "tree_method": "hist",
    "nthread": 16,
}
"""NVFlare's xgb_params when a histogram recipe is given none."""


def _sites(
    per_site_config: dict[str, dict[str, Any]] | None, recipe: str
) -> tuple[dict[str, Any], list[Path]]:
    """Each site's loader description (and lr_scale), and the files its loader classes need."""
    if not per_site_config:
        raise ConfigError(
            f"{recipe} needs per_site_config={{site: {{'data_loader': loader}}}} (or hpcflare's train_script=)"
        )
    sites: dict[str, Any] = {}
    files: dict[Path, None] = {}
    for site, config in per_site_config.items():
        loader = (config or {}).get("data_loader")
        if loader is None:
            raise ConfigError(f"{recipe}: per_site_config for {site!r} must include a 'data_loader'")
        unknown = sorted(set(config) - {"data_loader", "lr_scale"})
        if unknown:
            note(f"{recipe} per_site_config {unknown}", "accepted; no effect here")
        source, module, cls, args = object_spec(loader, "data_loader")
        sites[site] = {"loader": {"module": module, "class": cls, "args": args}}
        if "lr_scale" in config:
            sites[site]["lr_scale"] = float(config["lr_scale"])
        files.update(dict.fromkeys(shipped(source)))
    return sites, list(files)


def _no_effect(recipe: str, **given: Any) -> None:
    for key, (value, default) in given.items():
        if value != default:
            note(f"{recipe}({key}=...)", "a component setting of NVFlare's; no effect here")


def _site_files(owner: object, job: dict[str, Any]) -> list[Path]:
    folder = scratch_folder(owner, "hpcflare-xgb-")
    (folder / "xgb_job.json").write_text(json.dumps(job))
    (folder / "xgb_site.py").write_text(SITE_SCRIPT)
    return [folder / "xgb_site.py", folder / "xgb_job.json"]


def _histogram_job(
    owner: object,
    recipe: str,
    mode: str,
    num_rounds: int,
    early_stopping_rounds: int,
    use_gpus: bool,
    secure: bool,
    xgb_params: dict[str, Any] | None,
    per_site_config: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """The hpcflare recipe's keywords for an NVFlare histogram recipe (horizontal or vertical)."""
    if secure:
        raise ConfigError(
            f"{recipe}(secure=True): XGBoost's homomorphic-encryption plugins are not available here; "
            "the collective runs over the job's mutual TLS. Leave secure=False"
        )
    params = dict(DEFAULT_XGB_PARAMS if xgb_params is None else xgb_params)
    if use_gpus:
        params.setdefault("device", "cuda")
    sites, files = _sites(per_site_config, recipe)
    job = {
        "mode": mode,
        "xgb_params": params,
        "num_rounds": whole_number(f"{recipe} num_rounds", num_rounds, 1),
        "early_stopping_rounds": int(early_stopping_rounds),
        "sites": sites,
    }
    script, settings = _site_files(owner, job)
    return {"train_script": script, "extra_files": [settings, *files], "clients": list(sites)}


class XGBHorizontalRecipe(NvflareCalls, hp.XGBHistogramRecipe):
    """NVFlare's XGBHorizontalRecipe: histogram-based XGBoost over the sites' rows, ``num_rounds`` boosting
    rounds in one job round; the result model is the booster's JSON."""

    def __init__(
        self,
        name: str,
        min_clients: int,
        num_rounds: int,
        early_stopping_rounds: int = 2,
        use_gpus: bool = False,
        secure: bool = False,
        client_ranks: dict[str, int] | None = None,
        xgb_params: dict[str, Any] | None = None,
        data_loader_id: str = "dataloader",
        metrics_writer_id: str = "metrics_writer",
        per_site_config: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        _no_effect(
            "XGBHorizontalRecipe",
            client_ranks=(client_ranks, None),
            data_loader_id=(data_loader_id, "dataloader"),
            metrics_writer_id=(metrics_writer_id, "metrics_writer"),
        )
        job = _histogram_job(
            self,
            "XGBHorizontalRecipe",
            "histogram",
            num_rounds,
            early_stopping_rounds,
            use_gpus,
            secure,
            xgb_params,
            per_site_config,
        )
        super().__init__(name=name, min_clients=min_clients, **job, **kwargs)


class XGBVerticalRecipe(NvflareCalls, hp.XGBVerticalRecipe):
    """NVFlare's XGBVerticalRecipe (rows aligned first, e.g. by a PSI job): the label owner is rank 0 of the
    column-split collective; ``train_script=`` instead of ``per_site_config`` gives hpcflare's own recipe."""

    def __init__(
        self,
        name: str,
        min_clients: int,
        num_rounds: int,
        label_owner: str,
        early_stopping_rounds: int = 3,
        use_gpus: bool = False,
        secure: bool = False,
        client_ranks: dict[str, int] | None = None,
        xgb_params: dict[str, Any] | None = None,
        data_loader_id: str = "dataloader",
        metrics_writer_id: str = "metrics_writer",
        in_process: bool = True,
        model_file_name: str = "test.model.json",
        per_site_config: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        if "train_script" in kwargs:  # hpcflare's own vertical recipe under NVFlare's name
            super().__init__(name=name, min_clients=min_clients, label_owner=label_owner, **kwargs)
            return
        if client_ranks and client_ranks.get(label_owner) != 0:
            raise ConfigError(
                f"XGBVerticalRecipe: label_owner {label_owner!r} must have rank 0 in client_ranks"
            )
        _no_effect(
            "XGBVerticalRecipe",
            client_ranks=(client_ranks, None),
            data_loader_id=(data_loader_id, "dataloader"),
            metrics_writer_id=(metrics_writer_id, "metrics_writer"),
            in_process=(in_process, True),
            model_file_name=(model_file_name, "test.model.json"),
        )
        job = _histogram_job(
            self,
            "XGBVerticalRecipe",
            "vertical",
            num_rounds,
            early_stopping_rounds,
            use_gpus,
            secure,
            xgb_params,
            per_site_config,
        )
        if label_owner not in job["clients"]:
            raise ConfigError(f"XGBVerticalRecipe: label_owner {label_owner!r} must be in per_site_config")
        super().__init__(name=name, min_clients=min_clients, label_owner=label_owner, **job, **kwargs)


class XGBBaggingRecipe(NvflareCalls, hp.XGBBaggingRecipe):
    """NVFlare's XGBBaggingRecipe in its bagging mode (a federated random forest): every round each site adds
    a sub-forest on its rows, the server merges them; ``train_script=`` gives hpcflare's own recipe."""

    def __init__(
        self,
        name: str,
        min_clients: int,
        training_mode: str = "bagging",
        num_rounds: int | None = None,
        num_client_bagging: int | None = None,
        num_local_parallel_tree: int = 1,
        local_subsample: float = 0.8,
        learning_rate: float = 0.1,
        objective: str = "binary:logistic",
        max_depth: int = 8,
        eval_metric: str = "auc",
        tree_method: str = "hist",
        use_gpus: bool = False,
        nthread: int = 16,
        lr_mode: str = "uniform",
        save_name: str = "xgboost_model.json",
        data_loader_id: str = "dataloader",
        per_site_config: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        if "train_script" in kwargs:
            super().__init__(name=name, min_clients=min_clients, num_rounds=num_rounds or 1, **kwargs)
            return
        if training_mode != "bagging":
            raise ConfigError(
                f"XGBBaggingRecipe(training_mode={training_mode!r}): only 'bagging' is served here; for trees "
                "built in turn use XGBHorizontalRecipe (histogram-based boosting over every site's rows)"
            )
        if lr_mode not in ("uniform", "scaled"):
            raise ConfigError(f"XGBBaggingRecipe: lr_mode must be 'uniform' or 'scaled', got {lr_mode!r}")
        if not 0 < local_subsample <= 1:
            raise ConfigError(f"XGBBaggingRecipe: local_subsample must be in (0, 1], got {local_subsample}")
        _no_effect(
            "XGBBaggingRecipe",
            num_client_bagging=(num_client_bagging, None),
            save_name=(save_name, "xgboost_model.json"),
            data_loader_id=(data_loader_id, "dataloader"),
        )
        params: dict[str, Any] = {
            "objective": objective,
            "eta": float(learning_rate),
            "max_depth": int(max_depth),
            "eval_metric": eval_metric,
            "tree_method": tree_method,
            "nthread": int(nthread),
            "num_parallel_tree": int(num_local_parallel_tree),
            "subsample": float(local_subsample),
        }
        if use_gpus:
            params["device"] = "cuda"
        sites, files = _sites(per_site_config, "XGBBaggingRecipe")
        job = {"mode": "bagging", "xgb_params": params, "lr_mode": lr_mode, "sites": sites}
        script, settings = _site_files(self, job)
        super().__init__(
            name=name,
            min_clients=min_clients,
            num_rounds=int(num_rounds or 1),
            train_script=script,
            extra_files=[settings, *files],
            clients=list(sites),
            **kwargs,
        )


class XGBHistogramRecipe(NvflareCalls, hp.XGBHistogramRecipe):
    """hpcflare's histogram-based XGBoost recipe (a training script per site) under NVFlare's call signatures."""


__all__ = ["XGBBaggingRecipe", "XGBHistogramRecipe", "XGBHorizontalRecipe", "XGBVerticalRecipe"]
