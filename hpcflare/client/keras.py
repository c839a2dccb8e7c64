"""Keras weights on the wire: a model's weights as Keras gives them, kept in that shape across a round.

Keras hands out weights as a list of arrays (``model.get_weights()``) or, per layer, ``{layer.name:
layer.get_weights()}`` (what NVFlare's TensorFlow examples send). The wire carries one named tensor each, so
:func:`flatten` names them ``"[i]"`` and ``"<layer>[i]"``; :func:`unflatten` gives a script back the shape it
sent (dtypes are kept either way). Every other layout (a dict of arrays or tensors) passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

INDEXED = re.compile(r"^(.*)\[(\d+)\]$")


def is_keras_model(obj: Any) -> bool:
    return (
        hasattr(obj, "layers")
        and callable(getattr(obj, "get_weights", None))
        and not isinstance(obj, Mapping)
    )


def keras_weights(model: Any) -> dict[str, list[Any]]:
    """``{layer.name: layer.get_weights()}`` for the layers that have weights."""
    out = {}
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            out[layer.name] = weights
    return out


def set_keras_weights(model: Any, params: Mapping[str, Any] | list[Any]) -> Any:
    """Load received (or result) weights into a Keras model: a list for the whole model, or per layer."""
    params = unflatten(dict(params)) if isinstance(params, Mapping) else params
    if isinstance(params, list):
        model.set_weights(params)
    else:
        for name, weights in params.items():
            model.get_layer(name).set_weights(weights)
    return model


def flatten(params: Any) -> Any:
    """A list of arrays -> {"[i]": array}; {name: [arrays]} -> {"name[i]": array}; anything else unchanged."""
    if isinstance(params, list | tuple):
        return {f"[{i}]": value for i, value in enumerate(params)}
    if isinstance(params, Mapping) and any(isinstance(v, list | tuple) for v in params.values()):
        out: dict[str, Any] = {}
        for name, value in params.items():
            if isinstance(value, list | tuple):
                out.update({f"{name}[{i}]": v for i, v in enumerate(value)})
            else:
                out[str(name)] = value
        return out
    return params


def unflatten(params: dict[str, Any]) -> Any:
    """The inverse of :func:`flatten` when every name is indexed; other dicts are returned as they are."""
    if not params:
        return params
    matches = {name: INDEXED.match(name) for name in params}
    if not all(matches.values()):
        return params
    groups: dict[str, dict[int, Any]] = {}
    for name, match in matches.items():
        assert match is not None
        groups.setdefault(match.group(1), {})[int(match.group(2))] = params[name]
    for items in groups.values():
        if sorted(items) != list(range(len(items))):  # gaps: not a flattened list after all
            return params
    if set(groups) == {""}:
        return [groups[""][i] for i in range(len(groups[""]))]
    if "" in groups:
        return params
    return {prefix: [items[i] for i in range(len(items))] for prefix, items in groups.items()}
