"""Private aggregation's contract: the job option, the server-side wrapper, the site-side protocol object.

``privacy: {type: secagg|he, ...}`` in job.yaml wraps a FedAvg-family strategy (fedavg, fedopt): the wrapped
strategy still plans rounds and applies the mean update, but what it is handed is the mean of updates the
server (and every relay) only ever saw masked (secagg) or encrypted (he). The site side of the protocol runs
in the site's process, between the Client API and the wire (:class:`SitePrivacy`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.strategy.api import Aggregator, RoundPlan, ServerContext, Strategy
from hpcflare.transport.api import Task

PRIVACY_TYPES = ("secagg", "he")
HE_SECRET_FILE, HE_PUBLIC_FILE = "he_context.ctx", "he_public.ctx"
"""HE key files' names in startup kits (secret: client kits only; public: server and relay kits)."""
FEDAVG_FAMILY = ("fedavg", "fedopt")
HE_STRATEGIES = ("fedavg",)
"""HE: the server cannot apply a server optimizer to ciphertexts, so only the plain weighted mean."""
"""Strategies whose aggregate is a weighted mean of updates: the only kind a masked or encrypted sum gives."""


@dataclasses.dataclass(frozen=True)
class PrivacySpec:
    """job.yaml ``privacy:`` (every field documented in the README's "Private aggregation" section)."""

    type: str
    threshold: float = 0.5
    """secagg: shares needed to rebuild a site's secrets. An integer >= 2 is a count; a fraction in (0, 1) means
    more than that fraction of its share holders (a site and its mask partners), the default: a majority."""
    neighbours: int | None = None
    """secagg: mask partners per site (SecAgg+); None = every other site up to 32 sites, else 2*ceil(log2 n)+2."""
    frac_bits: int = 24
    """secagg: fixed-point precision, 2^-frac_bits per weighted value (24 -> 6e-8)."""
    setup_timeout: float = 120.0
    """secagg: seconds the server waits for the round's sites' keys, and again for their shares, before going
    on with those that sent them (a site gone silent stops the wait as soon as it is declared dead)."""
    unmask_timeout: float = 120.0
    """secagg: seconds the server waits after the round for the survivors' shares that remove the masks."""
    verify_timeout: float = 120.0
    """he: seconds the server waits after a round for one of its sites to confirm that the encrypted weight sum
    decrypts to the sum of the weights the sites declared; without that, the round fails unkept."""
    poly_modulus_degree: int = 8192
    """he: CKKS ring dimension (slots = half of it); 8192 gives 128-bit security with the default moduli."""
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    """he: CKKS coefficient moduli in bits (depth 2; more or larger primes cost speed and bytes)."""
    global_scale_bits: int = 40
    """he: CKKS scale 2^bits; sets precision (~1e-7 relative with 40)."""
    allow_weak_threshold: bool = False
    """secagg: accept a threshold of at most half of a site's share holders. With one, a server that lies about
    who dropped out can collect enough shares of both a site's mask seed and its masking key to unmask that
    site's update; refused unless set, and then logged as a warning when the server starts."""

    @classmethod
    def parse(cls, raw: Any) -> PrivacySpec | None:
        if raw in (None, {}):
            return None
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict) or raw.get("type") not in PRIVACY_TYPES:
            raise ConfigError(f"privacy must be {{type: secagg|he, ...}}, got {raw!r:.80}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"privacy: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
        raw = dict(raw)
        if "coeff_mod_bit_sizes" in raw and isinstance(raw["coeff_mod_bit_sizes"], list):
            raw["coeff_mod_bit_sizes"] = tuple(raw["coeff_mod_bit_sizes"])
        spec = cls(**raw)
        spec.check()
        return spec

    def check(self) -> None:
        t = self.threshold
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, float))
            or not (0 < t < 1 or (t >= 2 and t == int(t)))
        ):
            raise ConfigError(f"privacy.threshold must be a fraction in (0, 1) or a count >= 2, got {t!r}")
        if self.neighbours is not None and (
            isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 2
        ):
            raise ConfigError(f"privacy.neighbours must be an integer >= 2, got {self.neighbours!r}")
        if not isinstance(self.frac_bits, int) or not 8 <= self.frac_bits <= 40:
            raise ConfigError(f"privacy.frac_bits must be an integer in [8, 40], got {self.frac_bits!r}")
        for name in ("setup_timeout", "unmask_timeout", "verify_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86400:
                raise ConfigError(f"privacy.{name} must be seconds > 0, got {value!r}")
        if self.poly_modulus_degree not in (4096, 8192, 16384, 32768):
            raise ConfigError(
                f"privacy.poly_modulus_degree must be 4096, 8192, 16384 or 32768, got "
                f"{self.poly_modulus_degree!r}"
            )
        if (
            not all(isinstance(b, int) and 20 <= b <= 60 for b in self.coeff_mod_bit_sizes)
            or len(self.coeff_mod_bit_sizes) < 3
        ):
            raise ConfigError("privacy.coeff_mod_bit_sizes must be >= 3 integers in [20, 60]")
        if not isinstance(self.allow_weak_threshold, bool):
            raise ConfigError(
                f"privacy.allow_weak_threshold must be true or false, got {self.allow_weak_threshold!r}"
            )
        if not isinstance(self.global_scale_bits, int) or not 20 <= self.global_scale_bits <= 60:
            raise ConfigError(
                f"privacy.global_scale_bits must be an integer in [20, 60], got {self.global_scale_bits!r}"
            )

    def weak_threshold(self, sites: int) -> str:
        """Why this threshold is weak for a job of ``sites`` sites, or '' when it is not."""
        if self.type != "secagg" or sites < 2:
            return ""
        holders = self.partners(sites) + 1
        needed = self.shares_needed(holders)
        if 2 * needed > holders:
            return ""
        return (
            f"privacy.threshold={self.threshold:g} needs only {needed} of a site's {holders} share holders: a server "
            "that lies about who dropped out can collect enough shares of both its mask seed and its masking key "
            "to unmask its update"
        )

    def partners(self, n: int) -> int:
        """Mask partners per site for a round of ``n`` sites (even, so the SecAgg+ ring is symmetric)."""
        if self.neighbours is not None:
            k = self.neighbours
        elif n <= 33:
            k = n - 1
        else:
            k = 2 * int(np.ceil(np.log2(n))) + 2
        return n - 1 if k >= n - 1 else max(2, k - k % 2)

    def shares_needed(self, holders: int) -> int:
        """Shares needed out of a site's ``holders`` (itself and its partners)."""
        if self.threshold < 1:
            return min(holders, int(np.floor(self.threshold * holders)) + 1)
        return int(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return out


class PrivateStrategy(Strategy):
    """A FedAvg-family strategy whose aggregation happens on masked or encrypted updates: everything but
    aggregation (planning, checkpoints, services) is the wrapped strategy's."""

    def __init__(self, inner: Strategy, spec: PrivacySpec) -> None:
        self.inner, self.spec = inner, spec
        self.name = inner.name

    def attach(self, job_root: Any) -> None:
        self.inner.attach(job_root)

    def start_services(self, context: ServerContext) -> None:
        self.context = context
        self.inner.start_services(context)

    def stop_services(self) -> None:
        self.inner.stop_services()

    def initial_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.initial_params(params)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.inner.load_state_dict(state)

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        return self.inner.plan_round(round_num, total_rounds, live)

    def round_closed(self, round_num: int, plan: RoundPlan, results: dict[str, dict[str, Any]]) -> None:
        self.inner.round_closed(round_num, plan, results)

    def check_aggregate(self, round_num: int) -> None:
        self.inner.check_aggregate(round_num)

    def configure_round(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        return {**self.inner.configure_round(round_num, total_rounds), "privacy": self.spec.to_dict()}

    def inner_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return self.inner.new_aggregator(global_params)


POLL_FIRST, POLL_MAX = 0.05, 0.5
"""Seconds between a site's polls of the server during an exchange (doubling from the first to the max)."""


def poll(
    call: Callable[[dict[str, Any], float], dict],
    round_num: int,
    op: str,
    payload: dict[str, Any],
    wait: float,
) -> dict[str, Any]:
    """Ask the server's strategy ``op`` for round ``round_num`` until it answers other than 'wait', for at most
    ``wait`` seconds (the option that sets it is named by the caller's error)."""
    deadline, pause = time.monotonic() + wait, POLL_FIRST
    while True:
        reply = call({"op": op, "round": round_num, **payload}, wait)
        if reply.get("status") != "wait":
            return reply
        if time.monotonic() >= deadline:
            raise TimeoutError(op)
        time.sleep(pause)
        pause = min(POLL_MAX, 2 * pause)


class SitePrivacy:
    """The site's half of a private-aggregation protocol, driven by the site's ResultSender."""

    sends = "DIFF"
    """What protect() gets: the update as its difference to the received model, or the whole trained model."""

    def received(self, task: Task, params: Mapping[str, Any]) -> dict[str, Any]:
        """The round's model arrived (he: decrypt it; secagg: start the key exchange). Returns the model the
        script gets."""
        return dict(params)

    def protect(self, task: Task, update: dict[str, np.ndarray], weight: float) -> dict[str, np.ndarray]:
        """The update (float64, every tensor of the model; see ``sends``) as it may leave the site."""
        raise NotImplementedError

    def uploaded(self, task: Task) -> None:
        """The protected update was accepted (secagg: help the server remove the masks)."""
