"""Private aggregation: secure aggregation by pairwise masking (``secagg``) and CKKS homomorphic encryption
(``he``), chosen by job.yaml's ``privacy:`` on a FedAvg-family strategy. See api.py for the contract."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.plugins import CONFIG_CHECKS, STRATEGY_WRAPPERS
from hpcflare.privacy.api import (
    FEDAVG_FAMILY,
    HE_STRATEGIES,
    PRIVACY_TYPES,
    PrivacySpec,
    PrivateStrategy,
    SitePrivacy,
)
from hpcflare.privacy.secagg_server import SecAgg
from hpcflare.privacy.secagg_site import SecAggSite
from hpcflare.strategy.api import Strategy


def check_privacy(raw: Any, strategy: str, filters: list[dict[str, Any]]) -> PrivacySpec | None:
    """Parse job.yaml's ``privacy:`` and refuse combinations that cannot work (ConfigError)."""
    spec = PrivacySpec.parse(raw)
    if spec is None:
        return None
    if strategy not in FEDAVG_FAMILY:
        raise ConfigError(
            f"privacy {spec.type!r} works with the weighted-mean strategies {FEDAVG_FAMILY}, not {strategy!r}"
        )
    if any(isinstance(f, dict) and f.get("type") == "quantize" for f in filters):
        raise ConfigError(f"privacy {spec.type!r} encodes updates itself: remove the quantize filter")
    if spec.type == "he" and strategy not in HE_STRATEGIES:
        raise ConfigError(
            f"privacy 'he' works with {HE_STRATEGIES} (a server optimizer cannot run on ciphertexts), "
            f"not {strategy!r}"
        )
    if spec.type == "he" and importlib.util.find_spec("tenseal") is None:
        raise ConfigError("privacy type 'he' needs TenSEAL: pip install 'hpcflare[he]' (tenseal)")
    return spec


def wrap_strategy(inner: Strategy, spec: PrivacySpec | None, job_id: str) -> Strategy:
    if spec is None:
        return inner
    if spec.type == "secagg":
        return SecAgg(inner, spec, job_id)
    return importlib.import_module("hpcflare.privacy.he").HEStrategy(inner, spec)  # tenseal: optional extra


def site_privacy(
    spec: PrivacySpec | None,
    site: str,
    job_id: str,
    call: Callable[[dict[str, Any], float], dict],
    round_timeout: float,
    log: Any,
    job_root: Path,
    kit_dir: Any = None,
) -> SitePrivacy | None:
    if spec is None:
        return None
    if spec.type == "secagg":
        return SecAggSite(site, job_id, spec, call, round_timeout, log)
    return importlib.import_module("hpcflare.privacy.he").HESite(
        spec, job_root, site, kit_dir, call, round_timeout, log
    )


def ensure_job_keys(job_root: Path, sites: list[str], spec: PrivacySpec | None) -> None:
    """Make the job's HE keys (he_keys/ in the job dir) unless they exist; nothing for other privacy types."""
    if spec is not None and spec.type == "he":
        importlib.import_module("hpcflare.privacy.he").ensure_job_keys(job_root, sites, spec)


def _spec_of(config: Any) -> PrivacySpec | None:
    return check_privacy(config.privacy, config.strategy, config.filters)


def _check_config(config: Any) -> None:
    spec = _spec_of(config)
    weak = spec.weak_threshold(len(config.clients)) if spec is not None else ""
    if weak and not spec.allow_weak_threshold:  # type: ignore[union-attr]
        raise ConfigError(
            f"{weak}. Use a majority (the default threshold 0.5, or a count above half), or set "
            "privacy.allow_weak_threshold: true if the server is trusted to report dropouts honestly"
        )


CONFIG_CHECKS.register("privacy", _check_config)
STRATEGY_WRAPPERS.register(
    "privacy", lambda strategy, config: wrap_strategy(strategy, _spec_of(config), config.job_id)
)

__all__ = [
    "PRIVACY_TYPES",
    "PrivacySpec",
    "PrivateStrategy",
    "SecAgg",
    "SecAggSite",
    "SitePrivacy",
    "check_privacy",
    "ensure_job_keys",
    "site_privacy",
    "wrap_strategy",
]
