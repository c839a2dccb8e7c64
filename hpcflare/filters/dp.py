"""Gaussian differential privacy on a site's update: clip its L2 norm, add calibrated noise.

The update is the difference to the round's global model (a FULL result is turned into a DIFF first).
Its global L2 norm is clipped to ``clip`` and N(0, (noise_multiplier * clip)^2) noise is added to every
float coordinate, the Gaussian mechanism of DP-FedAvg (McMahan et al. 2018); integer tensors are not sent.
The (epsilon, delta) that results over a whole job depends on rounds and sampling: account for it with a
privacy accountant, this filter only applies the mechanism.
"""

from __future__ import annotations

import math

import numpy as np

from hpcflare.errors import ConfigError
from hpcflare.filters.api import Filter, Outgoing
from hpcflare.transport.codec import is_float


class GaussianDP(Filter):
    kind = "dp_gaussian"
    needs_global = True

    def __init__(self, clip: float, noise_multiplier: float, seed: int | None = None) -> None:
        if not clip > 0 or not noise_multiplier >= 0:
            raise ConfigError("dp_gaussian needs clip > 0 and noise_multiplier >= 0")
        self.clip, self.noise_multiplier = float(clip), float(noise_multiplier)
        self.rng = np.random.default_rng(seed)

    def apply(self, out: Outgoing) -> Outgoing:
        diff: dict[str, np.ndarray] = {}
        for name, value in out.params.items():
            if not is_float(value.dtype):
                continue
            if out.params_type == "FULL":
                if out.global_params is None or name not in out.global_params:
                    raise ConfigError(f"dp_gaussian: no global value for {name!r} to form the update")
                diff[name] = np.subtract(value, out.global_params[name], dtype=np.float64)
            else:
                diff[name] = np.asarray(value, dtype=np.float64)
        norm = math.sqrt(sum(float(np.vdot(d, d)) for d in diff.values()))
        scale = min(1.0, self.clip / norm) if norm > 0 else 1.0
        sigma = self.noise_multiplier * self.clip
        noisy = {}
        for name, d in diff.items():
            d *= scale
            if sigma:
                d += self.rng.normal(0.0, sigma, size=d.shape)
            noisy[name] = d.astype(out.params[name].dtype)
        out.params, out.params_type = noisy, "DIFF"
        return out
