"""NVFlare's job-side constants: ``DataKind`` (nvflare.apis.dxo)."""

from __future__ import annotations

import enum


class DataKind(str, enum.Enum):
    """What an aggregator expects; hpcflare's FedAvg takes WEIGHTS and WEIGHT_DIFF results alike."""

    FL_MODEL = "FL_MODEL"
    WEIGHTS = "WEIGHTS"
    WEIGHT_DIFF = "WEIGHT_DIFF"
    METRICS = "METRICS"
    ANALYTIC = "ANALYTIC"
    COLLECTION = "COLLECTION"
    STATISTICS = "STATISTICS"
    PSI = "PSI"
    APP_DEFINED = "APP_DEFINED"


__all__ = ["DataKind"]
