"""Privacy and bandwidth filters on what leaves a site: exclude variables, Gaussian DP, quantization."""

from __future__ import annotations

from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.filters.api import Filter, Outgoing, to_numpy
from hpcflare.filters.dp import GaussianDP
from hpcflare.filters.exclude import ExcludeVars
from hpcflare.filters.quantize import Quantize
from hpcflare.plugins import CONFIG_CHECKS

FILTERS: dict[str, type[Filter]] = {"exclude": ExcludeVars, "dp_gaussian": GaussianDP, "quantize": Quantize}


def build_filters(specs: Any) -> list[Filter]:
    """job.yaml ``filters: [{type: exclude, names: [...]}, {type: dp_gaussian, clip: 1, noise_multiplier: 0.5},
    {type: quantize, mode: int8, block: 64}]`` -> filter objects (ConfigError on anything wrong)."""
    if not isinstance(specs, list):
        raise ConfigError(f"filters must be a list, got {specs!r:.80}")
    out: list[Filter] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or spec.get("type") not in FILTERS:
            raise ConfigError(f"filters[{i}] needs 'type': one of {sorted(FILTERS)}")
        args = {k: v for k, v in spec.items() if k != "type"}
        try:
            out.append(FILTERS[spec["type"]](**args))
        except TypeError as exc:
            raise ConfigError(f"filters[{i}] ({spec['type']}): {exc}") from None
    if any(f.quantizes for f in out[:-1]):
        raise ConfigError("a quantize filter must be the last filter")
    return out


def apply_filters(
    filters: list[Filter],
    params: dict[str, Any],
    params_type: str,
    global_params: dict[str, Any] | None,
    quantize: bool = True,
) -> Outgoing:
    """Run a site's outgoing filters over its update (``quantize=False`` skips quantizers, e.g. for results
    left on the shared filesystem, which never cross the wire)."""
    out = Outgoing({k: to_numpy(v) for k, v in params.items()}, params_type, global_params)
    for f in filters:
        if f.quantizes and not quantize:
            continue
        out = f.apply(out)
    return out


def _check_config(config: Any) -> None:
    build_filters(config.filters)


CONFIG_CHECKS.register("filters", _check_config)

__all__ = [
    "apply_filters",
    "ExcludeVars",
    "FILTERS",
    "Filter",
    "GaussianDP",
    "Outgoing",
    "Quantize",
    "build_filters",
]
