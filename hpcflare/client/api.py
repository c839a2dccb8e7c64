"""The Client API, call-compatible with NVFlare's ``nvflare.client``: change the import line, keep the script.

State is per thread when a runtime bound an agent to the thread (SimEnv runs several sites in one
process), else per process.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any, Optional

from hpcflare.client.model import AnalyticsDataType, FLMetaKey, FLModel, ParamsType
from hpcflare.errors import SiteEndedError, StaleTaskError
from hpcflare.job import JobDir
from hpcflare.logs.rank_logger import RankLogger
from hpcflare.runtime.client_agent import ClientAgent
from hpcflare.transport.api import Task


class _Context:
    def __init__(self, agent: ClientAgent, owned: bool) -> None:
        self.agent = agent
        self.owned = owned  # True when init() created the agent itself (no launcher around us)
        self.initialized = False
        self.task: Optional[Task] = None
        self.model: Optional[FLModel] = None
        self.last_task_id: Optional[str] = None


_local = threading.local()
_process: Optional[_Context] = None


def bind(agent: ClientAgent, per_thread: bool) -> None:
    """Called by a launcher before it runs the training script."""
    global _process
    ctx = _Context(agent, owned=False)
    if per_thread:
        _local.ctx = ctx
    else:
        _process = ctx


def unbind() -> None:
    global _process
    if getattr(_local, "ctx", None) is not None:
        _local.ctx = None
    else:
        _process = None


def _ctx() -> _Context:
    ctx = getattr(_local, "ctx", None) or _process
    if ctx is None or not ctx.initialized:
        raise RuntimeError("hpcflare.client: call flare.init() first")
    return ctx


def init(rank: Optional[str] = None, config_file: Optional[str] = None) -> None:
    """Connect this process to its job. Under a launcher this only marks the API ready."""
    global _process
    ctx = getattr(_local, "ctx", None) or _process
    if ctx is None:
        job_dir = config_file and os.path.dirname(os.path.abspath(config_file)) or os.environ.get("HPCFLARE_JOB_DIR")
        site = os.environ.get("HPCFLARE_SITE_NAME")
        if not job_dir or not site:
            raise RuntimeError("hpcflare.client.init(): not running inside an hpcflare job (HPCFLARE_JOB_DIR / "
                               "HPCFLARE_SITE_NAME unset); start the script through a recipe, e.g. "
                               "recipe.execute(LocalEnv()) or `hpcflare run`")
        jd = JobDir(job_dir)
        agent = ClientAgent(jd, site, RankLogger(jd.log_dir, site, "client"), os.environ.get("HPCFLARE_SERVER")).start()
        ctx = _process = _Context(agent, owned=True)
        atexit.register(agent.close)
    if not ctx.agent.started:  # registering here makes script start-up part of the startup grace
        ctx.agent.start()
    ctx.initialized = True


def receive(timeout: Optional[float] = None) -> Optional[FLModel]:
    """The current task's model; blocks for the next task if none is pending. None once the job has ended."""
    ctx = _ctx()
    if ctx.model is not None:
        return ctx.model
    stale = False
    while True:
        if ctx.task is None:
            ctx.task = ctx.agent.next_task(timeout, ctx.last_task_id)
            if ctx.task is None:
                if stale:  # the script is inside a round that no longer exists: end it like the job's end
                    raise SiteEndedError(ctx.agent.end_reason or "the job ended")
                return None
        try:
            params = ctx.agent.fetch(ctx.task)
        except StaleTaskError as exc:  # the round closed before its model arrived: on to the next task
            ctx.agent.log.warning("task_stale", f"round {ctx.task.round}: {exc}; waiting for the next task",
                                  round=ctx.task.round)
            ctx.agent.tasks.pending = None
            clear()
            stale = True
            continue
        ctx.model = _to_flmodel(ctx.agent, ctx.task, params)
        return ctx.model


def _to_flmodel(agent: ClientAgent, task: Task, params: dict[str, Any]) -> FLModel:
    meta = {**task.meta, FLMetaKey.JOB_ID: agent.config.job_id, FLMetaKey.SITE_NAME: agent.site,
            FLMetaKey.CURRENT_ROUND: task.round, FLMetaKey.TOTAL_ROUNDS: task.total_rounds}
    return FLModel(params_type=ParamsType.FULL, params=params, current_round=task.round,
                   total_rounds=task.total_rounds, meta=meta)


def send(model: FLModel, clear_cache: bool = True) -> None:
    """Send this site's result for the current task."""
    if not isinstance(model, FLModel):
        raise TypeError(f"flare.send() expects an FLModel, got {type(model).__name__}; "
                        "wrap the params: flare.send(flare.FLModel(params=...))")
    ctx = _ctx()
    if ctx.task is None:
        raise RuntimeError("flare.send() called without a task: call flare.receive() first")
    if model.params is None and ctx.task.name != "train":
        model.params = {}  # an evaluation result: metrics only
    if not isinstance(model.params, dict) or (not model.params and ctx.task.name == "train"):
        raise ValueError("FLModel.params must be a non-empty dict of numpy arrays or torch tensors")
    ctx.agent.results.send(ctx.task, model.params, (model.params_type or ParamsType.FULL).value, model.meta or {},
                           model.metrics or {})
    ctx.agent.tasks.pending = None  # sent (or discarded as late): the site did its part of this task
    if clear_cache:
        clear()


def clear() -> None:
    """Forget the cached task/model so the next receive() fetches a new task."""
    ctx = _ctx()
    if ctx.task is not None:
        ctx.last_task_id = ctx.task.task_id
    ctx.task, ctx.model = None, None


def is_running() -> bool:
    """True while the job has work for this site (waits for the next task if needed)."""
    ctx = _ctx()
    if ctx.task is not None:
        return True
    if ctx.agent.ended:
        return False
    ctx.task = ctx.agent.next_task(None, ctx.last_task_id)
    return ctx.task is not None


def system_info() -> dict[str, Any]:
    ctx = _ctx()
    return {"job_id": ctx.agent.config.job_id, "site_name": ctx.agent.site}


def get_config() -> dict[str, Any]:
    ctx = _ctx()
    cfg = ctx.agent.config
    return {"job_id": cfg.job_id, "job_name": cfg.name, "site_name": ctx.agent.site, "num_rounds": cfg.num_rounds,
            "framework": cfg.framework, "train_args": list(cfg.train_args),
            "task_meta": dict(ctx.task.meta) if ctx.task else {}}


def get_job_id() -> str:
    return _ctx().agent.config.job_id


def get_site_name() -> str:
    return _ctx().agent.site


def get_task_name() -> Optional[str]:
    ctx = _ctx()
    return ctx.task.name if ctx.task else None


def is_train() -> bool:
    return get_task_name() == "train"


def is_evaluate() -> bool:
    return get_task_name() == "validate"


def is_submit_model() -> bool:
    return get_task_name() == "submit_model"


def log(key: str, value: Any, data_type: AnalyticsDataType | str = AnalyticsDataType.SCALAR, **kwargs: Any) -> None:
    """Record a metric; it is written to the site's log and travels to the server with the next result."""
    ctx = _ctx()
    dtype = data_type.value if isinstance(data_type, AnalyticsDataType) else str(data_type)
    record = {"key": str(key), "value": value, "data_type": dtype, "t": time.time(),
              **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}}
    ctx.agent.pending_logs.append(record)
    ctx.agent.log.info("metric", f"metric {key}={value}", **record)
