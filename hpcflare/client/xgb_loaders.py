"""NVFlare's XGBoost data loaders, and the site loop of NVFlare-shaped XGBoost recipes.

NVFlare's ``XGBHorizontalRecipe``, ``XGBVerticalRecipe`` and ``XGBBaggingRecipe`` take no training script: each site
gets a data loader object (``per_site_config={site: {"data_loader": CSVDataLoader(folder=...)}}``) and the
framework trains. ``hpcflare nvflare job.py`` rebuilds each site's loader at that site (its class, shipped with
the job when it is the job's own, and its constructor arguments) and runs :func:`run_site` with the recipe's
XGBoost settings. Rows never leave the site; the booster travels as JSON (:mod:`hpcflare.client.xgboost`).
"""

from __future__ import annotations

import importlib
import json
import math
from abc import ABC, abstractmethod
from typing import Any

from hpcflare.client import api as flare
from hpcflare.client.model import FLModel
from hpcflare.client.xgboost import federated, from_params, to_params
from hpcflare.errors import ConfigError

ROW, COL = 0, 1
"""XGBoost's DataSplitMode values (horizontal: rows; vertical: columns)."""


class XGBDataLoader(ABC):
    """NVFlare's data loader spec: ``initialize`` tells it the site, its rank in the collective and the split;
    ``load_data`` returns (train, validation) DMatrix objects."""

    def initialize(self, client_id: str, rank: int, data_split_mode: Any = ROW) -> None:
        self._client_id, self._rank, self._data_split_mode = client_id, rank, data_split_mode

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def data_split_mode(self) -> Any:
        return self._data_split_mode

    @abstractmethod
    def load_data(self) -> tuple[Any, Any]:
        """(train, validation) as xgboost.DMatrix."""


class CSVDataLoader(XGBDataLoader):
    """``{folder}/{site}/train.csv`` and ``valid.csv``, label in column 0 (vertical: only at rank 0), no header."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def load_data(self) -> tuple[Any, Any]:
        import xgboost as xgb

        label = "&label_column=0" if self.rank == 0 or int(self.data_split_mode) == ROW else ""
        mode = xgb.core.DataSplitMode(int(self.data_split_mode))
        out = []
        for part in ("train", "valid"):
            path = f"{self.folder}/{self.client_id}/{part}.csv"
            try:
                out.append(xgb.DMatrix(f"{path}?format=csv{label}", data_split_mode=mode))
            except xgb.core.XGBoostError as exc:
                raise ConfigError(f"{self.client_id}: CSVDataLoader cannot read {path}: {exc}") from None
        return out[0], out[1]


def build_loader(spec: dict[str, Any]) -> XGBDataLoader:
    """The site's loader from its description: module, class and constructor arguments."""
    cls = getattr(importlib.import_module(spec["module"]), spec["class"])
    return cls(**spec.get("args", {}))  # type: ignore[no-any-return]


def _metrics(history: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """The last value of each validation metric (``valid``'s; ``train``'s when there is no validation)."""
    series = history.get("valid") or history.get("train") or {}
    return {
        name: float(values[-1]) for name, values in series.items() if values and math.isfinite(values[-1])
    }


def _boost(
    job: dict[str, Any], site: str, loader: XGBDataLoader, model: FLModel
) -> tuple[Any, dict[str, float]]:
    import xgboost as xgb

    vertical = job["mode"] == "vertical"
    with federated(model) as rank:  # the DMatrix of a column split is built inside the collective
        loader.initialize(site, rank, COL if vertical else ROW)
        train, valid = loader.load_data()
        history: dict[str, Any] = {}
        booster = xgb.train(
            job["xgb_params"],
            train,
            int(job["num_rounds"]),
            evals=[(train, "train"), (valid, "valid")],
            early_stopping_rounds=job.get("early_stopping_rounds") or None,
            evals_result=history,
            verbose_eval=False,
        )
    return booster, _metrics(history)


def _continuing(params: dict[str, Any], parallel: int) -> Any:
    """The global forest to add this site's trees to, set to grow ``parallel`` trees per round (the merged
    model says 1; its iterations are told apart by iteration_indptr, so its predictions stay the same)."""
    import xgboost as xgb

    start = from_params(params)
    if start is None or parallel == 1:
        return start
    model = json.loads(bytes(start.save_raw("json")))
    model["learner"]["gradient_booster"]["model"]["gbtree_model_param"]["num_parallel_tree"] = str(parallel)
    return xgb.Booster(model_file=bytearray(json.dumps(model).encode()))


def _bag(
    job: dict[str, Any], site: str, loader: XGBDataLoader, model: FLModel
) -> tuple[Any, dict[str, float]]:
    """One round of NVFlare's bagging: a sub-forest on this site's rows added to the global model. The server
    scales each site's new trees by its weight share: 1 each (lr_mode uniform: learning_rate / sites, as
    NVFlare), or the site's lr_scale (lr_mode scaled: learning_rate x lr_scale when the scales sum to 1)."""
    import xgboost as xgb

    loader.initialize(site, 0, ROW)
    train, valid = loader.load_data()
    history: dict[str, Any] = {}
    booster = xgb.train(
        job["xgb_params"],
        train,
        1,
        xgb_model=_continuing(model.params, int(job["xgb_params"].get("num_parallel_tree", 1))),
        evals=[(valid, "valid")],
        evals_result=history,
        verbose_eval=False,
    )
    return booster, _metrics(history)


def run_site(job: dict[str, Any]) -> None:
    """The site loop: ``job`` is the recipe's description (mode, xgb_params, num_rounds..., and per site its
    loader under ``sites``)."""
    flare.init()
    site = flare.get_site_name()
    own = job["sites"].get(site)
    if own is None:
        raise ConfigError(f"{site} has no entry in the recipe's per_site_config ({sorted(job['sites'])})")
    loader = build_loader(own["loader"])
    step = _bag if job["mode"] == "bagging" else _boost
    weight = float(own.get("lr_scale", 1.0)) if job.get("lr_mode") == "scaled" else 1.0
    while flare.is_running():
        model = flare.receive()
        booster, metrics = step(job, site, loader, model)
        flare.send(
            FLModel(params=to_params(booster), metrics=metrics, meta={"NUM_STEPS_CURRENT_ROUND": weight})
        )
