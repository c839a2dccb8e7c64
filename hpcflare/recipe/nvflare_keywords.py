"""NVFlare recipe keywords (FedAvgRecipe family, NVFlare 2.7), mapped to hpcflare's or refused by name.

A job.py ported from NVFlare by renaming its imports passes keywords hpcflare spells differently. Each is
taken out of the recipe's keyword arguments here and turned into the hpcflare setting with the same meaning;
one without an hpcflare equivalent is a ConfigError that says what to do instead, never silently ignored.
"""

from __future__ import annotations

import shlex
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError

PYTHON_COMMANDS = ("python", "python3", "python -u", "python3 -u")
"""``command=`` values with NVFlare's default meaning: run the script with Python (hpcflare runs it with the
rank's own interpreter)."""
FORMATS = ("numpy", "pytorch", "raw")
KEYWORDS = (
    "initial_model",
    "initial_ckpt",
    "stop_cond",
    "patience",
    "exclude_vars",
    "aggregation_weights",
    "per_site_config",
    "launch_external_process",
    "command",
    "server_expected_format",
)


NO_EFFECT = {
    "server_memory_gc_rounds": (0, "the server frees each round's buffers when the round closes"),
    "client_memory_gc_rounds": (0, "a site frees the round's model when its script has sent its result"),
    "cuda_empty_cache": (False, "hpcflare holds no CUDA memory of its own at the sites"),
    "enable_tensor_disk_offload": (
        False,
        "the server folds each update in as it arrives and never holds them all; for large models use "
        "staging=True",
    ),
    "shutdown_timeout": (
        0.0,
        "sites end when the server says the job is done (settings.end_grace bounds it)",
    ),
    "best_model_filename": (None, "the best model is written to models/best_model.safetensors"),
    "save_filename": (None, "the best model is written to models/best_model.safetensors"),
    "device": (None, "the server aggregates on the CPU"),
    "source_model": ("model", "a component id of NVFlare's job configuration; hpcflare has none"),
}
"""NVFlare keywords that change nothing a job computes: (NVFlare's default, what hpcflare does instead)."""
NVFLARE_OBJECTS = ("aggregator", "model_persistor", "model_locator", "analytics_receiver")
"""Keywords that take an NVFlare component object: None is accepted, an object is refused (it would change how
the job aggregates or stores models, which hpcflare does with its own strategies)."""
DATA_KINDS = ("WEIGHTS", "WEIGHT_DIFF")
_noted: set[str] = set()
_noted_lock = threading.Lock()


def note(keyword: str, text: str) -> None:
    """Say once per process that an NVFlare keyword was accepted but means something else (or nothing) here."""
    with _noted_lock:
        if keyword in _noted:
            return
        _noted.add(keyword)
    print(f"[hpcflare] NVFlare keyword {keyword}: {text}", file=sys.stderr, flush=True)


def _no_effect(options: dict[str, Any]) -> None:
    for keyword, (default, instead) in NO_EFFECT.items():
        if keyword in options:
            value = options.pop(keyword)
            if value != default:
                note(keyword, f"{value!r} accepted; no effect here: {instead}")
    for keyword in NVFLARE_OBJECTS:
        value = options.pop(keyword, None)
        if value is not None:
            raise ConfigError(
                f"{keyword}={type(value).__name__}(...): NVFlare components do not run in hpcflare; choose the "
                "aggregation with the recipe class (FedAvg, FedOpt, FedMedian, SCAFFOLD, ...) and its keywords"
            )
    kind = options.pop("aggregator_data_kind", None)
    if kind is not None and str(_value(kind)).upper() not in DATA_KINDS:
        raise ConfigError(f"aggregator_data_kind={kind!r}: hpcflare aggregates {DATA_KINDS} only")


def _value(x: Any) -> Any:
    """Enum members (ExchangeFormat.NUMPY, TransferType.DIFF) as their values."""
    return getattr(x, "value", x)


def translate(model: Any, initial_checkpoint: Any, clients: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Pop NVFlare keywords from ``options`` (the recipe's **job_options); returns the hpcflare arguments:
    model, initial_checkpoint, clients, filters (to add), strategy_args (to add), site_train_args."""
    out: dict[str, Any] = {
        "model": model,
        "initial_checkpoint": initial_checkpoint,
        "clients": clients,
        "filters": [],
        "strategy_args": {},
    }
    _no_effect(options)
    if "initial_model" in options:
        initial = options.pop("initial_model")
        if model is not None:
            raise ConfigError(
                "initial_model= and model= name the same thing (NVFlare calls it initial_model): "
                "pass one of them"
            )
        if isinstance(initial, (str, Path)) and Path(initial).suffix != ".safetensors":
            raise ConfigError(
                f"initial_model={initial!r}: a checkpoint path goes in initial_ckpt= (with the model "
                "object as initial_model=), or pass a .safetensors file"
            )
        out["model"] = initial
    if "initial_ckpt" in options:
        if initial_checkpoint is not None:
            raise ConfigError("initial_ckpt= and initial_checkpoint= name the same thing: pass one of them")
        out["initial_checkpoint"] = options.pop("initial_ckpt")
    if isinstance(out["model"], (list, tuple, np.ndarray)):  # NVFlare's numpy recipes take a bare array
        out["model"] = {"numpy_key": np.asarray(out["model"], dtype=np.float32)}
    if "stop_cond" in options:
        options.setdefault("stop_condition", options.pop("stop_cond"))
    if "patience" in options:
        options["early_stop_patience"] = options.pop("patience")
        options.setdefault("key_metric", "accuracy")  # NVFlare's default key metric
    if "exclude_vars" in options:
        pattern = options.pop("exclude_vars")
        if pattern is not None:
            out["filters"].append({"type": "exclude", "regex": str(pattern)})
    if "aggregation_weights" in options:
        weights = options.pop("aggregation_weights")
        if weights is not None:
            if not isinstance(weights, dict):
                raise ConfigError(f"aggregation_weights must map site names to numbers, got {weights!r}")
            out["strategy_args"]["aggregation_weights"] = dict(weights)
    options.pop("launch_external_process", None)  # every hpcflare site already runs in a process of its own
    command = options.pop("command", None)
    if command is not None and " ".join(str(command).split()) not in PYTHON_COMMANDS:
        raise ConfigError(
            f"command={command!r}: hpcflare runs the training script with the rank's Python; a "
            "launcher command (torchrun, ...) is not supported: start one client rank per process "
            "and select GPUs inside the script"
        )
    fmt = options.pop("server_expected_format", None)
    if fmt is not None and str(_value(fmt)).lower() not in FORMATS:
        raise ConfigError(
            f"server_expected_format={fmt!r} must be one of {FORMATS} (hpcflare moves safetensors "
            "either way; scripts get tensors of the model's framework)"
        )
    if "params_transfer_type" in options:
        options["params_transfer_type"] = str(_value(options["params_transfer_type"])).upper()
    per_site = options.pop("per_site_config", None)
    if per_site is not None:
        out.update(per_site_arguments(per_site, clients, options))
    return out


def per_site_arguments(per_site: Any, clients: Any, options: dict[str, Any]) -> dict[str, Any]:
    """NVFlare's per_site_config {site: {train_args: ...}} names the sites and their arguments."""
    if (
        not isinstance(per_site, dict)
        or not per_site
        or not all(isinstance(v, dict) for v in per_site.values())
    ):
        raise ConfigError("per_site_config must map site names to dicts of per-site options")
    if clients is not None and sorted(clients) != sorted(per_site):
        raise ConfigError(
            f"per_site_config names sites {sorted(per_site)} but clients= names {sorted(clients)}"
        )
    args: dict[str, list[str]] = {}
    for site, conf in per_site.items():
        unknown = sorted(
            set(conf)
            - {
                "train_args",
                "launch_once",
                "command",
                "launch_external_process",
                "server_expected_format",
                "params_transfer_type",
            }
        )
        if unknown:
            raise ConfigError(
                f"per_site_config[{site!r}]: {unknown} cannot differ per site in hpcflare (one "
                "train_script for every site: branch on flare.get_site_name() inside it)"
            )
        for key in ("launch_once", "params_transfer_type"):
            if key in conf and options.get(key, conf[key]) != conf[key]:
                raise ConfigError(f"per_site_config[{site!r}].{key} must match the job's {key}")
        if conf.get("train_args") is not None:
            args[str(site)] = (
                shlex.split(conf["train_args"])
                if isinstance(conf["train_args"], str)
                else list(conf["train_args"])
            )
    return {"clients": list(clients or per_site), "site_train_args": args}
