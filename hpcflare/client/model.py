"""FLModel and friends, call-compatible with NVFlare's ``nvflare.app_common.abstract.fl_model``."""

from __future__ import annotations

import enum
from typing import Any, Optional


class ParamsType(str, enum.Enum):
    FULL = "FULL"
    DIFF = "DIFF"


class FLMetaKey:
    NUM_STEPS_CURRENT_ROUND = "NUM_STEPS_CURRENT_ROUND"
    PROCESS_RC_FILE = "PROCESS_RC_FILE"
    SUBMIT_MODEL_NAME = "submit_model_name"
    INITIAL_METRICS = "initial_metrics"
    FILTER_HISTORY = "filter_history"
    CONFIGS = "configs"
    VALIDATE_TYPE = "validate_type"
    START_ROUND = "start_round"
    CURRENT_ROUND = "current_round"
    TOTAL_ROUNDS = "total_rounds"
    JOB_ID = "job_id"
    SITE_NAME = "site_name"


MetaKey = FLMetaKey


class AnalyticsDataType(str, enum.Enum):
    SCALARS = "SCALARS"
    SCALAR = "SCALAR"
    IMAGE = "IMAGE"
    TEXT = "TEXT"
    LOG_RECORD = "LOG_RECORD"
    METRIC = "METRIC"
    METRICS = "METRICS"
    PARAMETER = "PARAMETER"
    PARAMETERS = "PARAMETERS"


class FLModel:
    """A model (or update) plus its metadata, as exchanged between a site's training code and the runtime."""

    def __init__(self, params_type: Optional[ParamsType | str] = None, params: Any = None,
                 optimizer_params: Any = None, metrics: Optional[dict] = None, start_round: Optional[int] = 0,
                 current_round: Optional[int] = None, total_rounds: Optional[int] = None,
                 meta: Optional[dict] = None) -> None:
        if params_type is not None:
            try:
                params_type = ParamsType(params_type)
            except ValueError:
                raise ValueError(f"params_type must be one of {[t.value for t in ParamsType]}, got {params_type!r}") from None
        FLModel.validate_params_type(params, params_type)
        if params is not None and params_type is None:
            params_type = ParamsType.FULL
        self.params_type = params_type
        self.params = params
        self.optimizer_params = optimizer_params
        self.metrics = metrics
        self.start_round = start_round
        self.current_round = current_round
        self.total_rounds = total_rounds
        self.meta = {} if meta is None else meta

    @staticmethod
    def validate_params_type(params: Any, params_type: Optional[ParamsType]) -> None:
        if params_type in (ParamsType.FULL, ParamsType.DIFF) and params is None:
            raise ValueError(f"params must be provided when params_type is {params_type.value}")

    def summary(self) -> dict[str, Any]:
        return {"params_type": self.params_type.value if self.params_type else None,
                "num_params": len(self.params) if self.params is not None else 0,
                "metrics": self.metrics, "current_round": self.current_round, "total_rounds": self.total_rounds,
                "meta": self.meta}

    def __repr__(self) -> str:
        return f"FLModel({self.summary()})"
