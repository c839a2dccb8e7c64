"""The Client API, call-compatible with NVFlare's ``nvflare.client``: change the import line, keep the script.

State is per thread when a runtime bound an agent to the thread (SimEnv runs several sites in one
process), else per process. ``flare.init()`` returns that state as an :class:`APIContext`; every function
also takes it as ``ctx=`` (NVFlare 2.7 style), and ``with flare.init() as ctx:`` shuts down at the end.

Rounds: ``FLModel.current_round`` counts from 0 like NVFlare's (the first round is 0); hpcflare's own logs,
status and tracking files count from 1 ("round 1/3" is ``current_round == 0``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from pathlib import Path
from typing import Any

from hpcflare.client import keras
from hpcflare.client.model import AnalyticsDataType, FLMetaKey, FLModel, ParamsType
from hpcflare.errors import SiteEndedError, StaleTaskError
from hpcflare.job import JobDir
from hpcflare.plugins import SITE_SIDES
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.site.agent import ClientAgent
from hpcflare.transport.api import Task

INITIAL_METRICS = FLMetaKey.INITIAL_METRICS
"""Task meta key under which the server sends the previous round's aggregated metrics."""


class APIContext:
    """One site's Client API state: what ``flare.init()`` returns and every function accepts as ``ctx=``."""

    def __init__(self, agent: ClientAgent, owned: bool) -> None:
        self.agent = agent
        self.owned = owned  # True when init() created the agent itself (no launcher around us)
        self.initialized = False
        self.closed = False
        self._task: Task | None = None
        self.seen: Task | None = None  # the last task this site was given: it outlives send() and clear()
        self.model: FLModel | None = None
        self.cached_metrics: Any = None  # @flare.evaluate's result, attached by @flare.train
        self.rank: str | None = None
        self.device: Any = (
            None  # the accelerator the script last sent tensors from: received tensors go there
        )

    @property
    def task(self) -> Task | None:
        """The task being worked on (None once sent or cleared)."""
        return self._task

    @task.setter
    def task(self, value: Task | None) -> None:
        self._task = value
        if value is not None:
            self.seen = value

    # derived from the last task seen: NVFlare keeps the task name after send(); tracking records get the round
    task_name = property(lambda self: self.seen.name if self.seen else None)
    round = property(lambda self: self.seen.round if self.seen else None)
    last_task_id = property(lambda self: self.seen.task_id if self.seen else None)

    def __enter__(self) -> APIContext:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown(ctx=self)


_local = threading.local()
_process: APIContext | None = None


def bind(agent: ClientAgent, per_thread: bool) -> None:
    """Called by a launcher before it runs the training script."""
    global _process
    ctx = APIContext(agent, owned=False)
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


def current() -> APIContext | None:
    """The context bound to this thread (SimEnv) or process, or None."""
    return getattr(_local, "ctx", None) or _process


def _ctx(ctx: APIContext | None = None) -> APIContext:
    ctx = ctx or current()
    if ctx is None or not ctx.initialized:
        raise RuntimeError("hpcflare.client: call flare.init() first")
    if ctx.closed:
        raise RuntimeError("hpcflare.client: the Client API was shut down (flare.shutdown())")
    return ctx


def init(rank: str | None = None, config_file: str | None = None) -> APIContext:
    """Connect this process to its job; returns the context. Under a launcher this only marks the API ready.
    Calling it again (a script run once per round, or a Lightning callback) returns the same context."""
    global _process
    ctx = current()
    if ctx is None:
        job_dir = (
            config_file
            and os.path.dirname(os.path.abspath(config_file))
            or os.environ.get("HPCFLARE_JOB_DIR")
        )
        site = os.environ.get("HPCFLARE_SITE_NAME")
        if not job_dir or not site:
            raise RuntimeError(
                "hpcflare.client.init(): not running inside an hpcflare job (HPCFLARE_JOB_DIR / "
                "HPCFLARE_SITE_NAME unset); start the script through a recipe, e.g. "
                "recipe.execute(LocalEnv()) or `hpcflare run`"
            )
        jd = JobDir(job_dir)
        agent = ClientAgent(
            jd,
            site,
            RankLogger(jd.log_dir, site, "client"),
            os.environ.get("HPCFLARE_SERVER"),
            site_sides=SITE_SIDES,
        ).start()
        ctx = _process = APIContext(agent, owned=True)
        atexit.register(agent.close)
    if not ctx.agent.started:  # registering here makes script start-up part of the startup grace
        ctx.agent.start()
    ctx.initialized, ctx.closed, ctx.rank = True, False, rank
    return ctx


def receive(timeout: float | None = None, ctx: APIContext | None = None) -> FLModel | None:
    """The current task's model; blocks for the next task if none is pending. None once the job has ended."""
    ctx = _ctx(ctx)
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
            ctx.agent.log.warning(
                "task_stale",
                f"round {ctx.task.round}: {exc}; waiting for the next task",
                round=ctx.task.round,
            )
            ctx.agent.tasks.pending = None
            clear(ctx)
            stale = True
            continue
        ctx.model = _to_flmodel(ctx.agent, ctx.task, _on_device(params, ctx.device))
        return ctx.model


def _device_of(params: dict[str, Any]) -> Any:
    """The torch device (other than the CPU) a script's sent tensors live on, or None."""
    for value in params.values():
        device = getattr(value, "device", None)
        if hasattr(value, "detach") and getattr(device, "type", "cpu") != "cpu":
            return device
    return None


def _on_device(params: dict[str, Any], device: Any) -> dict[str, Any]:
    """Received torch tensors on the device the script last sent from (they arrive on the CPU, as in NVFlare,
    until a script sends GPU tensors; numpy arrays stay as they are)."""
    if device is None:
        return params
    return {name: value.to(device) if hasattr(value, "detach") else value for name, value in params.items()}


def _to_flmodel(agent: ClientAgent, task: Task, params: dict[str, Any]) -> FLModel:
    current_round = task.round - 1  # NVFlare counts rounds from 0
    meta = {
        **task.meta,
        FLMetaKey.JOB_ID: agent.config.job_id,
        FLMetaKey.SITE_NAME: agent.site,
        FLMetaKey.CURRENT_ROUND: current_round,
        FLMetaKey.TOTAL_ROUNDS: task.total_rounds,
    }
    previous = task.meta.get(INITIAL_METRICS)
    return FLModel(
        params_type=ParamsType.FULL,
        params=keras.unflatten(params),  # the shape Keras weights were sent in; other layouts as they are
        current_round=current_round,
        total_rounds=task.total_rounds,
        meta=meta,
        metrics=dict(previous) if isinstance(previous, dict) and previous else None,
    )


def send(model: FLModel, clear_cache: bool = True, ctx: APIContext | None = None) -> None:
    """Send this site's result for the current task."""
    if not isinstance(model, FLModel):
        raise TypeError(
            f"flare.send() expects an FLModel, got {type(model).__name__}; "
            "wrap the params: flare.send(flare.FLModel(params=...))"
        )
    ctx = _ctx(ctx)
    if ctx.task is None:
        raise RuntimeError("flare.send() called without a task: call flare.receive() first")
    if model.metrics is not None and not isinstance(model.metrics, dict):
        raise TypeError(f"FLModel.metrics must be a dict, got {type(model.metrics).__name__}")
    params = keras.flatten(model.params)  # Keras weights (a list, or lists per layer) as named tensors
    if params is None and ctx.task.name != "train":
        params = {}  # metrics only: an evaluation result, accepted for every task but training (as in NVFlare)
    if not isinstance(params, dict) or (not params and ctx.task.name == "train"):
        raise ValueError(
            "FLModel.params must be a non-empty dict of numpy arrays or torch tensors, or Keras weights (a "
            "list of arrays, or {layer name: list of arrays}); a training task needs the trained weights "
            "(metrics alone answer only validate tasks)"
        )
    if params:
        ctx.device = _device_of(
            params
        )  # CUDA tensors are copied to the CPU for the wire, and come back there
    ctx.agent.results.send(
        ctx.task, params, (model.params_type or ParamsType.FULL).value, model.meta or {}, model.metrics or {}
    )
    ctx.agent.tasks.pending = None  # sent (or discarded as late): the site did its part of this task
    if clear_cache:
        clear(ctx)


def clear(ctx: APIContext | None = None) -> None:
    """Forget the cached task/model so the next receive() fetches a new task (the task name stays)."""
    ctx = _ctx(ctx)
    ctx.task, ctx.model = None, None


def is_running(ctx: APIContext | None = None) -> bool:
    """True while the job has work for this site (waits for the next task if needed)."""
    ctx = ctx or current()
    if ctx is not None and ctx.closed:
        return False
    ctx = _ctx(ctx)
    if ctx.task is not None:
        return True
    if ctx.agent.ended:
        return False
    ctx.task = ctx.agent.next_task(None, ctx.last_task_id)
    return ctx.task is not None


def shutdown(ctx: APIContext | None = None) -> None:
    """End this script's use of the Client API (NVFlare's ``flare.shutdown()``); tracking records are flushed."""
    ctx = ctx or current()
    if ctx is None or ctx.closed:
        return
    ctx.agent.tracks.flush()
    ctx.closed = True
    if ctx.owned:
        ctx.agent.close()


def system_info(ctx: APIContext | None = None) -> dict[str, Any]:
    ctx = _ctx(ctx)
    return {"job_id": ctx.agent.config.job_id, "site_name": ctx.agent.site}


def get_config(ctx: APIContext | None = None) -> dict[str, Any]:
    """The job's view for this site, plus NVFlare's ClientConfig sections (TASK_EXCHANGE, SITE_NAME, JOB_ID)."""
    ctx = _ctx(ctx)
    cfg = ctx.agent.config
    return {
        "job_id": cfg.job_id,
        "job_name": cfg.name,
        "site_name": ctx.agent.site,
        "num_rounds": cfg.num_rounds,
        "framework": cfg.framework,
        "train_args": list(cfg.train_args),
        "task_meta": dict(ctx.task.meta) if ctx.task else {},
        "SITE_NAME": ctx.agent.site,
        "JOB_ID": cfg.job_id,
        "TASK_EXCHANGE": {
            "train_with_eval": True,
            "exchange_format": cfg.framework,
            "transfer_type": cfg.params_transfer_type,
            "train_task_name": "train",
            "eval_task_name": "validate",
            "submit_model_task_name": "submit_model",
        },
    }


def get_workspace(ctx: APIContext | None = None) -> Path:
    """This site's working directory in the job (``<job_dir>/sites/<site>/``, created): where a site keeps
    files of its own (a PSI intersection, local checkpoints). Not in NVFlare's API."""
    ctx = _ctx(ctx)
    path = ctx.agent.job_dir.site_dir(ctx.agent.site)
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_job_id(ctx: APIContext | None = None) -> str:
    return _ctx(ctx).agent.config.job_id


def get_site_name(ctx: APIContext | None = None) -> str:
    return _ctx(ctx).agent.site


def get_task_name(ctx: APIContext | None = None) -> str | None:
    """The current (or last) task's name: 'train', 'validate', 'submit_model'; it keeps its value after send()."""
    return _ctx(ctx).task_name


def is_train(ctx: APIContext | None = None) -> bool:
    return get_task_name(ctx) == "train"


def is_evaluate(ctx: APIContext | None = None) -> bool:
    return get_task_name(ctx) == "validate"


def is_submit_model(ctx: APIContext | None = None) -> bool:
    return get_task_name(ctx) == "submit_model"


NUMBER_TYPES = (AnalyticsDataType.SCALAR, AnalyticsDataType.METRIC)
MAPPING_TYPES = (AnalyticsDataType.SCALARS, AnalyticsDataType.METRICS, AnalyticsDataType.PARAMETERS)
TEXT_TYPES = (AnalyticsDataType.TEXT,)


def _checked_record(key: Any, value: Any, data_type: Any) -> tuple[str, Any]:
    """NVFlare's checks on a tracking record, raised in the script where the mistake is: the key is a string,
    the data type one of AnalyticsDataType, the value of that type's kind (a one-element tensor or array counts
    as its number). Returns the data type's name and the value."""
    if not isinstance(key, str) or not key:
        raise TypeError(f"flare.log(): key must be a non-empty str, got {key!r:.80}")
    try:
        kind = AnalyticsDataType(data_type.value if isinstance(data_type, AnalyticsDataType) else data_type)
    except ValueError:
        raise TypeError(
            f"flare.log(): data_type must be one of {[t.value for t in AnalyticsDataType]}, got {data_type!r:.80}"
        ) from None
    number = (int, float)
    if kind in NUMBER_TYPES and not isinstance(value, number) and callable(getattr(value, "item", None)):
        try:
            value = value.item()  # numpy and torch scalars, loss tensors
        except (ValueError, RuntimeError):
            pass
    if kind in NUMBER_TYPES and (isinstance(value, bool) or not isinstance(value, number)):
        raise TypeError(
            f"flare.log({key!r}): a {kind.value} value must be a number, got {type(value).__name__}"
        )
    if kind in MAPPING_TYPES and not isinstance(value, dict):
        raise TypeError(
            f"flare.log({key!r}): a {kind.value} value must be a dict, got {type(value).__name__}"
        )
    if kind in TEXT_TYPES and not isinstance(value, str):
        raise TypeError(f"flare.log({key!r}): a {kind.value} value must be a str, got {type(value).__name__}")
    return kind.value, value


def log(
    key: str,
    value: Any,
    data_type: AnalyticsDataType | str = AnalyticsDataType.SCALAR,
    ctx: APIContext | None = None,
    **kwargs: Any,
) -> bool:
    """Record a tracking value (NVFlare's ``flare.log``); it reaches the server's tracking outputs with this
    site's name, the round and ``global_step``. The tracking writers in :mod:`hpcflare.client.tracking` call this."""
    dtype, value = _checked_record(key, value, data_type)
    ctx = _ctx(ctx)
    record = {
        **kwargs,
        "key": str(key),
        "value": value,
        "data_type": dtype,
        "t": time.time(),
        "round": ctx.round,
    }
    return ctx.agent.tracks.add(record)
