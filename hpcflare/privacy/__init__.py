"""Private aggregation: secure aggregation by pairwise masking (``secagg``) and CKKS homomorphic encryption
(``he``), chosen by job.yaml's ``privacy:`` on a FedAvg-family strategy. See api.py for the contract."""

from __future__ import annotations

from typing import Any, Callable

from hpcflare.errors import ConfigError
from hpcflare.privacy.api import FEDAVG_FAMILY, PRIVACY_TYPES, PrivacySpec, PrivateStrategy, SitePrivacy
from hpcflare.privacy.secagg_server import SecAgg
from hpcflare.privacy.secagg_site import SecAggSite
from hpcflare.strategy.api import Strategy


def check_privacy(raw: Any, strategy: str, filters: list[dict[str, Any]]) -> PrivacySpec | None:
    """Parse job.yaml's ``privacy:`` and refuse combinations that cannot work (ConfigError)."""
    spec = PrivacySpec.parse(raw)
    if spec is None:
        return None
    if strategy not in FEDAVG_FAMILY:
        raise ConfigError(f"privacy {spec.type!r} works with the weighted-mean strategies {FEDAVG_FAMILY}, not "
                          f"{strategy!r}")
    if any(isinstance(f, dict) and f.get("type") == "quantize" for f in filters):
        raise ConfigError(f"privacy {spec.type!r} encodes updates itself: remove the quantize filter")
    if spec.type == "he":
        from hpcflare.privacy import he  # noqa: F401 - tenseal is an optional extra: fail at job start, not mid-round
    return spec


def wrap_strategy(inner: Strategy, spec: PrivacySpec | None, job_id: str, kits: Any = None) -> Strategy:
    if spec is None:
        return inner
    if spec.type == "secagg":
        return SecAgg(inner, spec, job_id)
    from hpcflare.privacy.he import HEStrategy

    return HEStrategy(inner, spec, kits)


def site_privacy(spec: PrivacySpec | None, site: str, job_id: str, call: Callable[[dict[str, Any], float], dict],
                 round_timeout: float, log: Any, kit_dir: Any = None) -> SitePrivacy | None:
    if spec is None:
        return None
    if spec.type == "secagg":
        return SecAggSite(site, job_id, spec, call, round_timeout, log)
    from hpcflare.privacy.he import HESite

    return HESite(spec, kit_dir)


__all__ = ["PRIVACY_TYPES", "PrivacySpec", "PrivateStrategy", "SecAgg", "SecAggSite", "SitePrivacy", "check_privacy",
           "site_privacy", "wrap_strategy"]
