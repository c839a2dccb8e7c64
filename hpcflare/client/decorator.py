"""``@flare.train`` and ``@flare.evaluate`` with NVFlare's semantics.

``@flare.evaluate``: receives the current model (cached, so a later receive() returns the same), passes it as
the function's first argument, and:
- in a training task, keeps the returned metrics; ``@flare.train`` attaches them to its result;
- in any other task (validate), sends them as the task's result (``FLModel(metrics=...)``).
``@flare.train``: receives the model, passes it as the first argument, requires an ``FLModel`` back, attaches
the cached evaluation metrics, and sends it. A bare number returned by an evaluate function is recorded under
the job's ``key_metric`` (or ``"accuracy"``, NVFlare's default key metric), because results carry a dict.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from hpcflare.client import api
from hpcflare.client.model import FLModel


def _call_with_model(fn: Callable[..., Any], model: FLModel | None, args: tuple, kwargs: dict) -> Any:
    """NVFlare replaces the function's first parameter with the received model."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"{fn.__name__}() must take the received model as its first argument")
    first = params[0].name
    if args:  # fn(old_model, 5): the first positional argument is replaced
        return fn(model, *args[1:], **{k: v for k, v in kwargs.items() if k != first})
    return fn(**{**kwargs, first: model})


def _as_metrics(value: Any, ctx: api.APIContext) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        key = ctx.agent.config.key_metric or "accuracy"
        return {key: float(value.item() if hasattr(value, "item") else value)}
    raise TypeError(
        f"an @flare.evaluate function must return a dict of metrics or a number, got {type(value).__name__}"
    )


def _on_received(fn: Callable[..., Any], args: tuple, kwargs: dict, what: str) -> tuple[api.APIContext, Any]:
    """Receive the task's model, call ``fn`` with it; returns (context, fn's non-None result)."""
    ctx = api._ctx()
    result = _call_with_model(fn, api.receive(ctx=ctx), args, kwargs)
    if result is None:
        raise RuntimeError(
            f"@flare.{what} function {fn.__name__}() returned None; return "
            + ("an FLModel" if what == "train" else "its metrics")
        )
    return ctx, result


def train(_func: Callable[..., Any] | None = None, **root_kwargs: Any) -> Any:
    def decorator(train_fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(train_fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx, result = _on_received(train_fn, args, kwargs, "train")
            if not isinstance(result, FLModel):
                raise RuntimeError(
                    f"@flare.train function {train_fn.__name__}() must return an FLModel, got "
                    f"{type(result).__name__}"
                )
            if ctx.cached_metrics is not None:
                result.metrics = ctx.cached_metrics
                ctx.cached_metrics = None
            api.send(result, ctx=ctx)
            return result

        return wrapper

    return decorator if _func is None else decorator(_func)


def evaluate(_func: Callable[..., Any] | None = None, **root_kwargs: Any) -> Any:
    def decorator(eval_fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(eval_fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx, result = _on_received(eval_fn, args, kwargs, "evaluate")
            if api.is_train(ctx=ctx):
                ctx.cached_metrics = _as_metrics(result, ctx)
            else:
                api.send(FLModel(metrics=_as_metrics(result, ctx)), ctx=ctx)
            return result

        return wrapper

    return decorator if _func is None else decorator(_func)
