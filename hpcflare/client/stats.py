"""Federated statistics, site side: turn local feature values into the guarded summaries the server asks for.

    while flare.is_running():
        task = flare.receive()
        flare.send(flare.FLModel(params=local_statistics({"age": ages, "bmi": bmis}, task.meta)))

Phase 1 sends count/sum/sum of squares/min/max, phase 2 a histogram over the global range. Features with
fewer than ``min_count`` values (the server's, or this site's own stricter ``min_count``) are not sent at
all; with ``noise`` > 0, Gaussian noise scaled to the feature's range is added to sums, counts and bins,
and min/max are coarsened to 1/20 of the range, so exact raw values do not leave the site.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def local_statistics(
    features: Mapping[str, Any],
    meta: Mapping[str, Any],
    min_count: int | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    phase = int(meta.get("stats_phase", 1))
    floor = max(int(meta.get("min_count", 1)), int(min_count or 0))
    noise = float(meta.get("noise", 0.0))
    ranges = meta.get("ranges") or {}
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in meta.get("features") or list(features):
        if name not in features:
            continue
        values = np.asarray(features[name], dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        if values.size < floor:
            continue  # too few values: min/max or a sum could identify a person
        span = float(values.max() - values.min()) or 1.0
        jitter = (
            (lambda shape, span=span: rng.normal(0.0, noise * span, size=shape))
            if noise
            else (lambda shape: 0.0)
        )
        if phase == 1:
            step = span / 20 if noise else 0.0
            lo = np.floor(values.min() / step) * step if step else values.min()
            hi = np.ceil(values.max() / step) * step if step else values.max()
            count_noise = rng.normal(0.0, noise * 2) if noise else 0.0
            out[f"{name}.count"] = np.array([values.size + count_noise])
            out[f"{name}.sum"] = np.array([values.sum()]) + jitter(1)
            out[f"{name}.sumsq"] = np.array([np.square(values).sum()]) + jitter(1) * span
            out[f"{name}.min"], out[f"{name}.max"] = np.array([lo]), np.array([hi])
        elif name in ranges:
            lo, hi = ranges[name]
            bins = int(meta.get("bins", 20))
            hist, _ = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
            out[f"{name}.hist"] = hist.astype(np.float64) + (
                rng.normal(0.0, noise * 2, size=bins) if noise else 0.0
            )
    return out
