"""FLModel and friends, call-compatible with NVFlare's ``nvflare.app_common.abstract.fl_model``.

Validation follows NVFlare: a non-dict ``metrics``/``meta`` or a non-int round is a TypeError, a negative
round a ValueError, FULL/DIFF without params a ValueError; ``summary()`` has NVFlare's keys.
"""

from __future__ import annotations

import enum
from typing import Any


class ParamsType(str, enum.Enum):
    FULL = "FULL"
    DIFF = "DIFF"


class FLMetaKey:
    """Keys of ``FLModel.meta`` (NVFlare's ``nvflare.apis.fl_constant.FLMetaKey``)."""

    NUM_STEPS_CURRENT_ROUND = "NUM_STEPS_CURRENT_ROUND"
    PROCESSED_ALGORITHM = "PROCESSED_ALGORITHM"
    PROCESSED_KEYS = "PROCESSED_KEYS"
    INITIAL_METRICS = "initial_metrics"
    FILTER_HISTORY = "filter_history"
    CONFIGS = "configs"
    VALIDATE_TYPE = "validate_type"
    START_ROUND = "start_round"
    CURRENT_ROUND = "current_round"
    TOTAL_ROUNDS = "total_rounds"
    JOB_ID = "job_id"
    SITE_NAME = "site_name"
    PROCESS_RC_FILE = "_process_rc.txt"
    SUBMIT_MODEL_NAME = "submit_model_name"


MetaKey = FLMetaKey


class AnalyticsDataType(str, enum.Enum):
    """What a tracking record holds (NVFlare's ``nvflare.apis.analytix.AnalyticsDataType``)."""

    SCALARS = "SCALARS"
    SCALAR = "SCALAR"
    IMAGE = "IMAGE"
    TEXT = "TEXT"
    LOG_RECORD = "LOG_RECORD"
    METRIC = "METRIC"
    METRICS = "METRICS"
    PARAMETER = "PARAMETER"
    PARAMETERS = "PARAMETERS"
    TAG = "TAG"
    TAGS = "TAGS"
    INIT_DATA = "INIT_DATA"


def _check_round(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class FLModel:
    """A model (or update) plus its metadata, as exchanged between a site's training code and the runtime."""

    def __init__(
        self,
        params_type: ParamsType | str | None = None,
        params: Any = None,
        optimizer_params: Any = None,
        metrics: dict | None = None,
        start_round: int | None = 0,
        current_round: int | None = None,
        total_rounds: int | None = None,
        meta: dict | None = None,
    ) -> None:
        if params_type is not None:
            try:
                params_type = ParamsType(params_type)
            except ValueError:
                raise ValueError(
                    f"params_type must be one of {[t.value for t in ParamsType]}, got {params_type!r}"
                ) from None
        FLModel.validate_params_type(params, params_type)
        if params is not None and params_type is None:
            params_type = ParamsType.FULL
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        for name, value in (
            ("start_round", start_round),
            ("current_round", current_round),
            ("total_rounds", total_rounds),
        ):
            _check_round(name, value)
        self.params_type = params_type
        self.params = params
        self.optimizer_params = optimizer_params
        self.metrics = metrics
        self.start_round = start_round
        self.current_round = current_round
        self.total_rounds = total_rounds
        self.meta = {} if meta is None else meta

    @staticmethod
    def validate_params_type(params: Any, params_type: ParamsType | None) -> None:
        if params_type in (ParamsType.FULL, ParamsType.DIFF) and params is None:
            raise ValueError(f"params must be provided when params_type is {params_type.value}")

    def summary(self) -> dict[str, Any]:
        """NVFlare's summary: set fields only; dicts as their length, ints as themselves, others as their type."""
        out: dict[str, Any] = {}
        for key in (
            "params",
            "optimizer_params",
            "metrics",
            "meta",
            "params_type",
            "start_round",
            "current_round",
            "total_rounds",
        ):
            value = getattr(self, key)
            if not value:
                continue
            if isinstance(value, dict):
                out[key] = len(value)
            elif isinstance(value, (ParamsType, int)):
                out[key] = value
            else:
                out[key] = type(value)
        return out

    def __repr__(self) -> str:
        return str(self.summary())

    __str__ = __repr__
