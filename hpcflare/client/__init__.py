"""NVFlare-compatible Client API: ``import hpcflare.client as flare`` replaces ``import nvflare.client as flare``."""

from hpcflare.client.api import (APIContext, clear, get_config, get_job_id, get_site_name, get_task_name, get_workspace, init,
                                 is_evaluate, is_running, is_submit_model, is_train, log, receive, send, shutdown,
                                 system_info)
from hpcflare.client.decorator import evaluate, train
from hpcflare.client.model import AnalyticsDataType, FLMetaKey, FLModel, MetaKey, ParamsType

__all__ = ["APIContext", "AnalyticsDataType", "FLMetaKey", "FLModel", "MetaKey", "ParamsType", "clear", "evaluate",
           "get_config", "get_job_id", "get_site_name", "get_task_name", "get_workspace", "init", "is_evaluate", "is_running",
           "is_submit_model", "is_train", "log", "receive", "send", "shutdown", "system_info", "train"]
