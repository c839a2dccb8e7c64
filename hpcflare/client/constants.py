"""NVFlare's constant classes that client scripts import, with NVFlare's values.

Served under their NVFlare module names in zero-change mode (see :mod:`hpcflare.compat`):
``nvflare.app_common.app_constant``, ``nvflare.app_common.np.constants``, ``nvflare.client.config``,
``nvflare.apis.fl_constant``, ``nvflare.apis.analytix``.
"""

from __future__ import annotations

from hpcflare.client.model import AnalyticsDataType, FLMetaKey, MetaKey

__all__ = [
    "AlgorithmConstants",
    "AnalyticsDataType",
    "AppConstants",
    "ConfigKey",
    "ExchangeFormat",
    "ExecutorTasks",
    "FLMetaKey",
    "LogWriterName",
    "MetaKey",
    "ModelName",
    "NPConstants",
    "TransferType",
    "ValidateType",
]


class AppConstants:
    START_ROUND = "start_round"
    CURRENT_ROUND = "current_round"
    CONTRIBUTION_ROUND = "contribution_round"
    NUM_ROUNDS = "num_rounds"
    GLOBAL_MODEL = "global_model"
    LOG_DIR = "model_log_dir"
    CKPT_PRELOAD_PATH = "ckpt_preload_path"
    DXO = "DXO"
    PHASE = "_phase_"
    PHASE_INIT = "_init_"
    PHASE_TRAIN = "train"
    PHASE_FINISHED = "_finished_"
    MODEL_WEIGHTS = "_model_weights_"
    AGGREGATION_RESULT = "_aggregation_result"
    AGGREGATION_ACCEPTED = "_aggregation_accepted"
    TRAIN_SHAREABLE = "_train_shareable_"
    TRAINING_RESULT = "_training_result_"
    CROSS_VAL_DIR = "cross_site_val"
    RECEIVED_MODEL = "_receive_model_"
    RECEIVED_MODEL_OWNER = "_receive_model_owner_"
    MODEL_TO_VALIDATE = "_model_to_validate_"
    VALIDATION_RESULT = "_validation_result_"
    TASK_TRAIN = "train"
    TASK_VALIDATION = "validate"
    TASK_SUBMIT_MODEL = "submit_model"
    MODEL_OWNER = "_model_owner_"
    DEFAULT_AGGREGATOR_ID = "aggregator"
    DEFAULT_PERSISTOR_ID = "persistor"
    DEFAULT_SHAREABLE_GENERATOR_ID = "shareable_generator"
    SUBMIT_MODEL_NAME = "submit_model_name"
    VALIDATE_TYPE = "_validate_type"


class ExecutorTasks:
    TRAIN = "train"
    VALIDATE = "validate"
    CROSS_VALIDATION = "__cross_validation"
    SUBMIT_BEST = "__submit_best"
    REPORT_STATUS = "report_status"


class ValidateType:
    BEFORE_TRAIN_VALIDATE = "before_train_validate"
    MODEL_VALIDATE = "model_validate"


class ModelName:
    BEST_MODEL = "best_model"


class AlgorithmConstants:
    SCAFFOLD_CTRL_DIFF = "scaffold_c_diff"
    SCAFFOLD_CTRL_GLOBAL = "scaffold_c_global"
    SCAFFOLD_CTRL_AGGREGATOR_ID = "scaffold_ctrl_aggregator"


class NPConstants:
    """The key of the single array in NVFlare's numpy examples."""

    NUMPY_KEY = "numpy_key"


class ExchangeFormat:
    RAW = "raw"
    PYTORCH = "pytorch"
    NUMPY = "numpy"


class TransferType:
    FULL = "FULL"
    DIFF = "DIFF"


class ConfigKey:
    EXCHANGE_FORMAT = "exchange_format"
    TRANSFER_TYPE = "transfer_type"
    TRAIN_WITH_EVAL = "train_with_eval"
    TRAIN_TASK_NAME = "train_task_name"
    EVAL_TASK_NAME = "eval_task_name"
    SUBMIT_MODEL_TASK_NAME = "submit_model_task_name"
    TASK_EXCHANGE = "TASK_EXCHANGE"
    METRICS_EXCHANGE = "METRICS_EXCHANGE"
    SITE_NAME = "SITE_NAME"
    JOB_ID = "JOB_ID"


class LogWriterName:
    TORCH_TB = "TORCH_TENSORBOARD"
    MLFLOW = "MLFLOW"
    WANDB = "WEIGHTS_AND_BIASES"
