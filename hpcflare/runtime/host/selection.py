"""Best-model selection and early stopping by a key metric the sites report.

Sites report metrics of the model they *received* (NVFlare's convention: validate the global model, then
train), so the key metric of round r scores the global model served in round r: the initial model for
round 1, else round r-1's checkpoint. When it improves, that file is hard-linked to
``models/best_model.safetensors`` (no copy) and ``models/best_model.json`` records round and value.
With ``early_stop_patience: N`` the job ends (completed) after N rounds without improvement; with
``stop_condition: 'accuracy >= 0.9'`` (NVFlare's stop_cond) once a round's mean metrics satisfy it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_link, atomic_write_json
from hpcflare.job import STOP_OPERATORS, parse_stop_condition


class ModelSelector:
    def __init__(
        self,
        models_dir: Path,
        key: str | None,
        mode: str,
        patience: int,
        initial_model: Path,
        log: Any,
        last_checkpoint: Callable[[], Path | None],
        stop_condition: str | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"key_metric_mode must be 'max' or 'min', got {mode!r}")
        self.models_dir, self.key, self.mode, self.patience = models_dir, key, mode, int(patience)
        self.initial_model, self.log, self.last_checkpoint = initial_model, log, last_checkpoint
        self.condition = parse_stop_condition(stop_condition) if stop_condition else None
        self.condition_met = ""
        self.best: float | None = None
        self.best_round = 0
        self.stale = 0
        self.observed = 0
        """The last round whose metrics were scored (a round run again after a resume is not counted twice)."""
        record = models_dir / "best_model.json"
        if key and record.is_file():  # a resumed job keeps its best so far
            data = json.loads(record.read_text())
            self.best, self.best_round, self.stale = data["value"], data["round"], data.get("stale", 0)
            self.observed = int(data.get("observed", self.best_round))

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def observe(self, number: int, means: dict[str, float]) -> None:
        """Round ``number`` closed with these per-key means; the checkpoint on disk is still round number-1's
        (the server scores before it keeps round ``number``)."""
        if self.condition is not None:
            name, op, bound = self.condition
            if name in means and STOP_OPERATORS[op](means[name], bound):
                self.condition_met = f"stop condition '{name} {op} {bound:g}' met ({name}={means[name]:.6g})"
        if not self.key or number <= self.observed:
            return
        self.observed = number
        value = means.get(self.key)
        if value is None:
            self.log.warning(
                "key_metric_missing",
                f"round {number}: no site reported key_metric {self.key!r}; reported: {sorted(means)}",
                round=number,
            )
            return
        if self._better(value):
            scored = self.initial_model if number == 1 else self.last_checkpoint()
            if scored is None:
                raise FileNotFoundError(
                    f"round {number}: no checkpoint of round {number - 1} to save as best model"
                )
            target = self.models_dir / "best_model.safetensors"
            atomic_link(scored, target)
            self.best, self.best_round, self.stale = value, number, 0
            self.log.info(
                "best_model",
                f"round {number}: {self.key}={value:.6g} is the best so far; model saved as {target.name}",
                round=number,
                key=self.key,
                value=value,
            )
        else:
            self.stale += 1
        atomic_write_json(
            self.models_dir / "best_model.json",
            {
                "key": self.key,
                "mode": self.mode,
                "value": self.best,
                "round": self.best_round,
                "stale": self.stale,
                "scores_model_of_round": self.best_round - 1,
                "observed": self.observed,
            },
        )

    def stop_reason(self) -> str:
        """Why the job should end now ('' = go on): the stop condition, or patience run out."""
        if self.condition_met:
            return self.condition_met
        if self.key and self.patience > 0 and self.stale >= self.patience:
            return (
                f"{self.key} did not improve for {self.patience} rounds (best {self.best:.6g} in round "
                f"{self.best_round})"
            )
        return ""
