"""Cross-site evaluation: every site's model evaluated at every site, as a matrix.

Rounds 1..train_rounds are FedAvg training (0 = evaluate only). Then one 'submit_model' round collects each
site's own model (flare.is_submit_model(): send your local model) into ``cross_site/models/<site>``. Then
one 'validate' round per model (each site's, and the global model as 'global'): every site evaluates it
and sends metrics. ``cross_site/matrix.json`` holds {model owner: {evaluating site: metrics}}, rewritten
after each round. The task meta ``model_owner`` tells a site whose model it is evaluating; the submit task's
meta ``submit_model_name`` is NVFlare's (``best_model``: the site sends the local model it would keep).
``submit_models=False`` evaluates only the global model (NVFlare's add_final_global_evaluation). The same
results are also written in NVFlare's layout, ``cross_site_val/cross_val_results.json`` ({evaluating site:
{model: metrics}}, the global model as ``SRV_FL_global_model.pt``).

``server_models`` ({name: safetensors file in the job's app/}) adds models the server holds (NVFlare's model
locator: pre-trained models) to those evaluated, under their names; ``evaluate_global=False`` leaves the global
model out (an evaluation of pre-trained models only).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write_json
from hpcflare.strategy.aggregate import WeightedMeanAggregator
from hpcflare.strategy.api import (
    Aggregator,
    ClientUpdate,
    PassThroughAggregator,
    RoundPlan,
    Strategy,
    TaskKind,
    UpdateKind,
)
from hpcflare.strategy.fedavg import FedAvg
from hpcflare.transport.codec import write_safetensors
from hpcflare.transport.model_files import load_params

GLOBAL = "global"
NVFLARE_GLOBAL = "SRV_FL_global_model.pt"
"""The global model's name in NVFlare's cross_site_val/cross_val_results.json."""
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""A server model's name (its file in cross_site/models/ and its key in the results)."""
SUBMIT_MODEL_NAME = "best_model"
"""NVFlare's ModelName.BEST_MODEL: what a submit task asks for."""


class CrossSiteEval(Strategy):
    name = "cross_site_eval"
    supports_relays = False

    def __init__(
        self,
        train_rounds: int = 0,
        submit_models: bool = True,
        server_models: Mapping[str, str] | None = None,
        evaluate_global: bool = True,
        **fedavg: Any,
    ) -> None:
        """``fedavg``: the training rounds' FedAvg options (aggregation_weights, fedprox_mu)."""
        self.train_rounds = int(train_rounds)
        self.submit_models = bool(submit_models)
        self.server_models = dict(server_models or {})
        for name, path in self.server_models.items():
            if not MODEL_NAME.fullmatch(name) or Path(path).is_absolute() or ".." in Path(path).parts:
                raise ConfigError(
                    f"cross_site_eval server model {name!r} -> {path!r}: names are letters, digits, '_', '-', "
                    "'.'; files are paths inside the job's app/"
                )
        self.evaluate_global = bool(evaluate_global)
        self.training = FedAvg(**fedavg)
        self.root = Path("cross_site")
        self.owners: list[str] = []
        self.matrix: dict[str, dict[str, Any]] = {}
        self._task = TaskKind.TRAIN
        self._owner = ""

    def attach(self, job_root: Path) -> None:
        self.root = job_root / "cross_site"
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        for name, path in self.server_models.items():  # the server's own models join the evaluated ones
            target = self.root / "models" / f"{name}.safetensors"
            if not target.is_file():
                shutil.copyfile(job_root / "app" / path, target)
        if (self.root / "matrix.json").is_file():  # a resumed job keeps the evaluations done so far
            self.matrix = json.loads((self.root / "matrix.json").read_text())

    def _collected(self) -> list[str]:
        models = sorted(p.stem for p in (self.root / "models").glob("*.safetensors"))
        return models + [GLOBAL] if self.evaluate_global else models

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        if round_num <= self.train_rounds:
            self._task = TaskKind.TRAIN
            return RoundPlan()
        if round_num == self.train_rounds + 1 and not self.submit_models:
            self.owners = self._collected()
            return RoundPlan(skip=True)
        if round_num == self.train_rounds + 1:
            self._task = TaskKind.SUBMIT_MODEL
            return RoundPlan(task=TaskKind.SUBMIT_MODEL)
        index = round_num - self.train_rounds - 2
        self.owners = self.owners or self._collected()
        if index >= len(self.owners):
            return RoundPlan(skip=True)
        self._task, self._owner = TaskKind.VALIDATE, self.owners[index]
        model = (
            None
            if self._owner == GLOBAL
            else load_params(self.root / "models" / f"{self._owner}.safetensors")
        )
        return RoundPlan(task=TaskKind.VALIDATE, model=model)

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        if self._task == TaskKind.TRAIN:
            return self.training.configure_round(round_num, total_rounds)
        if self._task == TaskKind.SUBMIT_MODEL:
            return {"submit_model_name": SUBMIT_MODEL_NAME}
        return {"model_owner": self._owner} if self._task == TaskKind.VALIDATE else {}

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        if plan.task == TaskKind.SUBMIT_MODEL:
            self.owners = self._collected()
        elif plan.task == TaskKind.VALIDATE:
            self.matrix[self._owner] = {site: dict(m) for site, m in results.items()}
            atomic_write_json(self.root / "matrix.json", self.matrix, indent=1, sort_keys=True, default=str)
            by_evaluator: dict[str, dict[str, Any]] = {}  # NVFlare's layout: evaluator -> model -> metrics
            for owner, row in self.matrix.items():
                for site, metrics in row.items():
                    by_evaluator.setdefault(site, {})[NVFLARE_GLOBAL if owner == GLOBAL else owner] = metrics
            folder = self.root.parent / "cross_site_val"
            folder.mkdir(exist_ok=True)
            atomic_write_json(
                folder / "cross_val_results.json", by_evaluator, indent=1, sort_keys=True, default=str
            )

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        if self._task == TaskKind.SUBMIT_MODEL:
            return _CollectModels(global_params, self.root / "models")
        if self._task == TaskKind.TRAIN:
            return self.training.new_aggregator(global_params)
        return WeightedMeanAggregator(global_params)


class _CollectModels(PassThroughAggregator):
    """Writes each submitted (validated) model to its own file instead of folding it."""

    def __init__(self, global_params: Mapping[str, np.ndarray], folder: Path) -> None:
        super().__init__(global_params)
        self.folder = folder

    def add(self, update: ClientUpdate) -> None:
        params = {
            name: update.params[name] if name in update.params else base
            for name, base in self._global.items()
        }
        if update.params_type == UpdateKind.DIFF:
            params = {k: v + self._global[k] if k in update.params else v for k, v in params.items()}
        write_safetensors(self.folder / f"{update.site}.safetensors", params)
        self._count += 1
