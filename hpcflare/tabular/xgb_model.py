"""XGBoost models as they travel: JSON bytes in a uint8 tensor, checked before use, and merged into a forest.

The server never needs xgboost: a model is parsed as JSON, its trees are checked for a sane structure (the
upload is untrusted input), and bagging appends every site's new trees to the global model as one boosting
iteration, each site's leaf values scaled by its share of the rows (so the forest averages the sites' trees).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hpcflare.errors import UpdateRejectedError

MODEL_KEY = "model"
"""The tensor name a tree model travels under (uint8, the JSON text)."""
EMPTY = b"{}"
"""The global model before round 1: no trees yet."""
TREE_ARRAYS = (
    "left_children",
    "right_children",
    "parents",
    "split_indices",
    "split_conditions",
    "default_left",
    "base_weights",
    "loss_changes",
    "sum_hessian",
)


def to_tensor(model_json: bytes | bytearray | str) -> np.ndarray:
    data = model_json.encode() if isinstance(model_json, str) else bytes(model_json)
    return np.frombuffer(data, dtype=np.uint8).copy()


def from_tensor(tensor: np.ndarray) -> bytes:
    return np.asarray(tensor, dtype=np.uint8).tobytes()


def is_empty(tensor: np.ndarray) -> bool:
    return from_tensor(tensor).strip() in (b"", EMPTY)


def parse(data: bytes, who: str) -> dict[str, Any]:
    """The model's JSON, with its trees checked; raises UpdateRejectedError naming ``who`` and the problem."""
    try:
        model = json.loads(data)
        booster = model["learner"]["gradient_booster"]
        if booster.get("name") != "gbtree":
            raise ValueError(f"booster {booster.get('name')!r}, only gbtree models can be combined")
        trees = booster["model"]["trees"]
        n_features = int(model["learner"]["learner_model_param"]["num_feature"])
        if not isinstance(trees, list) or len(booster["model"]["tree_info"]) != len(trees):
            raise ValueError("trees and tree_info differ in length")
        for i, tree in enumerate(trees):
            check_tree(tree, n_features, f"tree {i}")
    except UpdateRejectedError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UpdateRejectedError(
            f"{who}: not a usable XGBoost JSON model ({type(exc).__name__}: {exc})"[:400]
        ) from None
    return model


def check_tree(tree: dict[str, Any], n_features: int, where: str) -> None:
    n = int(tree["tree_param"]["num_nodes"])
    if not 1 <= n <= 1 << 24:
        raise ValueError(f"{where}: {n} nodes")
    for key in TREE_ARRAYS:
        if len(tree[key]) != n:
            raise ValueError(f"{where}: {key} has {len(tree[key])} entries for {n} nodes")
    left, right = np.asarray(tree["left_children"], np.int64), np.asarray(tree["right_children"], np.int64)
    leaf = left == -1
    if not ((left >= -1) & (left < n) & (right >= -1) & (right < n)).all() or (leaf != (right == -1)).any():
        raise ValueError(f"{where}: child index out of range")
    if ((left[~leaf] <= np.flatnonzero(~leaf)) | (right[~leaf] <= np.flatnonzero(~leaf))).any():
        raise ValueError(f"{where}: a child precedes its parent (cycle)")
    split = np.asarray(tree["split_indices"], np.int64)
    if ((split[~leaf] < 0) | (split[~leaf] >= n_features)).any():
        raise ValueError(f"{where}: split on a feature outside 0..{n_features - 1}")
    for key in ("split_conditions", "base_weights"):
        if not np.isfinite(np.asarray(tree[key], np.float64)).all():
            raise ValueError(f"{where}: {key} has NaN/Inf")


def num_trees(model: dict[str, Any] | None) -> int:
    return 0 if model is None else len(model["learner"]["gradient_booster"]["model"]["trees"])


def new_trees(
    model: dict[str, Any], base: dict[str, Any] | None, who: str
) -> list[tuple[dict[str, Any], int]]:
    """The trees ``model`` added on top of ``base`` -> [(tree, tree_info)], after checking it is the same kind
    of model (features, objective, classes)."""
    inner = model["learner"]["gradient_booster"]["model"]
    start = num_trees(base)
    if base is not None:
        same_kind(model, base, who)
    if len(inner["trees"]) <= start:
        raise UpdateRejectedError(
            f"{who}: its model has {len(inner['trees'])} trees, no new one on top of the "
            f"global model's {start}"
        )
    return list(zip(inner["trees"][start:], inner["tree_info"][start:]))


def same_kind(model: dict[str, Any], other: dict[str, Any], who: str) -> None:
    """Refuse a model with other features, classes or objective than ``other`` (the global or first one)."""
    for key in ("num_feature", "num_class", "num_target"):
        have, want = (m["learner"]["learner_model_param"].get(key) for m in (model, other))
        if have != want:
            raise UpdateRejectedError(
                f"{who}: {key} is {have}, the other sites' model has {want}; every site needs "
                "the same feature columns and task"
            )
    if model["learner"]["objective"]["name"] != other["learner"]["objective"]["name"]:
        raise UpdateRejectedError(
            f"{who}: objective {model['learner']['objective']['name']!r} differs from the "
            f"other sites' {other['learner']['objective']['name']!r}"
        )


def scale_leaves(tree: dict[str, Any], factor: float) -> dict[str, Any]:
    """The tree with every leaf value (and base weight) multiplied by ``factor``."""
    out = dict(tree)
    left = tree["left_children"]
    out["split_conditions"] = [
        c * factor if left[i] == -1 else c for i, c in enumerate(tree["split_conditions"])
    ]
    out["base_weights"] = [w * factor for w in tree["base_weights"]]
    return out


LOGIT_OBJECTIVES = ("binary:logistic", "reg:logistic", "binary:logitraw")
IDENTITY_OBJECTIVES = ("reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:quantileerror")


def _base_scores(model: dict[str, Any]) -> np.ndarray:
    text = str(model["learner"]["learner_model_param"]["base_score"]).strip("[]")
    return np.array([float(v) for v in text.split(",")], np.float64)


def mean_base_score(models: list[tuple[dict[str, Any], float]]) -> str | None:
    """Round 1: every site boosted from its own base score (its label mean); the forest starts from their
    weighted mean in margin space, so it equals the weighted mean of the sites' models. None when the
    objective's link is not known here (the first site's base score is kept)."""
    objective = models[0][0]["learner"]["objective"]["name"]
    if objective not in LOGIT_OBJECTIVES + IDENTITY_OBJECTIVES:
        return None
    total = sum(w for _, w in models) or 1.0
    logit = objective in LOGIT_OBJECTIVES and objective != "binary:logitraw"
    margin = sum(
        w / total * (np.log(b / (1 - b)) if logit else b)
        for m, w in models
        for b in [np.clip(_base_scores(m), 1e-12, 1 - 1e-12) if logit else _base_scores(m)]
    )
    value = 1 / (1 + np.exp(-margin)) if logit else margin
    return "[" + ",".join(f"{v:.9E}" for v in np.atleast_1d(value)) + "]"


def merge_forest(
    base: dict[str, Any] | None,
    first: dict[str, Any],
    additions: list[tuple[list[tuple[dict[str, Any], int]], float]],
    base_score: str | None = None,
) -> dict[str, Any]:
    """``base`` (None in round 1: ``first``'s settings, with ``base_score`` if given) plus one boosting
    iteration made of every site's new trees, each site's leaves scaled by its weight share."""
    model = json.loads(json.dumps(base if base is not None else first))
    inner = model["learner"]["gradient_booster"]["model"]
    if base is None:
        inner["trees"], inner["tree_info"], inner["iteration_indptr"] = [], [], [0]
        if base_score is not None:
            model["learner"]["learner_model_param"]["base_score"] = base_score
    total = sum(w for _, w in additions)
    added = 0
    for trees, weight in additions:
        share = weight / total if total > 0 else 1.0 / len(additions)
        for tree, info in trees:
            tree = scale_leaves(tree, share)
            tree["id"] = len(inner["trees"])
            inner["trees"].append(tree)
            inner["tree_info"].append(info)
            added += 1
    indptr = inner.setdefault("iteration_indptr", [0])
    indptr.append(indptr[-1] + added)
    param = inner["gbtree_model_param"]
    param["num_trees"] = str(len(inner["trees"]))
    param["num_parallel_tree"] = "1"  # what a site continues with: one new tree (per class) per round
    return model


def dumps(model: dict[str, Any]) -> bytes:
    return json.dumps(model, separators=(",", ":")).encode()
