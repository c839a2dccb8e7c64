"""PyTorch Lightning integration (NVFlare's ``nvflare.client.lightning``): ``flare.patch(trainer)``.

    import hpcflare.client.lightning as flare        # or, unchanged, nvflare.client.lightning
    trainer = Trainer(max_epochs=1); flare.patch(trainer)
    while flare.is_running():
        input_model = flare.receive()
        trainer.validate(model, datamodule=dm)        # scores the global model (loaded into `model` here)
        trainer.fit(model, datamodule=dm)             # trains it; the result goes back with those metrics

The callback loads the received weights at the round's first validate or fit, sends validation metrics as the
result of a validate task, and sends the trained state_dict (weighted by the round's training steps) at the
end of fit. Each ``fit`` adds ``max_epochs`` more epochs, and optimizer state carries over between rounds
(``restore_state``). Works with ``lightning`` and ``pytorch_lightning`` trainers (an optional extra:
``pip install 'hpcflare[lightning]'``); in DDP only global rank 0 talks to the job and broadcasts.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from hpcflare.client.api import (
    APIContext,
    clear,
    get_config,
    get_job_id,
    get_site_name,
    init,
    is_evaluate,
    is_running,
    is_submit_model,
    is_train,
    log,
    receive,
    send,
    shutdown,
    system_info,
)
from hpcflare.client.model import AnalyticsDataType, FLMetaKey, FLModel, ParamsType

__all__ = [
    "AnalyticsDataType",
    "FLModel",
    "ParamsType",
    "get_config",
    "get_job_id",
    "get_site_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_submit_model",
    "is_train",
    "log",
    "patch",
    "receive",
    "send",
    "shutdown",
    "system_info",
]
logger = logging.getLogger(__name__)
"""NVFlare's module logger (``nvflare.client.lightning.logger``)."""

FL_META_KEY = "__fl_meta__"
"""A LightningModule attribute (dict) whose entries are added to the result's meta, as in NVFlare."""


def _callback_base(trainer: Any) -> type:
    if type(trainer).__module__.startswith("pytorch_lightning"):
        from pytorch_lightning.callbacks import Callback
    else:
        from lightning.pytorch.callbacks import Callback
    return Callback


@functools.cache
def _callback_class(base: type) -> type:
    return type("FLCallback", (_FLCallbackMixin, base), {})


def __getattr__(name: str) -> Any:
    """``FLCallback``: the federated callback for the Lightning that is installed (``lightning``, else
    ``pytorch_lightning``), for scripts that add it to their trainer themselves."""
    if name != "FLCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        from pytorch_lightning.callbacks import Callback
    return _callback_class(Callback)


def patch(
    trainer: Any,
    restore_state: bool = True,
    load_state_dict_strict: bool = True,
    ctx: APIContext | None = None,
) -> None:
    """Add the federated callback to ``trainer`` (once)."""
    callbacks = trainer.callbacks if isinstance(trainer.callbacks, list) else [trainer.callbacks]
    if any(isinstance(cb, _FLCallbackMixin) for cb in callbacks):
        return
    callback = _callback_class(_callback_base(trainer))(
        rank=trainer.global_rank,
        restore_state=restore_state,
        load_state_dict_strict=load_state_dict_strict,
        ctx=ctx,
    )
    trainer.callbacks = [*callbacks, callback]


class _FLCallbackMixin:
    def __init__(
        self,
        rank: int = 0,
        restore_state: bool = True,
        load_state_dict_strict: bool = True,
        ctx: APIContext | None = None,
    ) -> None:
        super().__init__()
        self.rank, self.restore_state, self.strict = rank, restore_state, load_state_dict_strict
        self.ctx = init(rank=str(rank)) if rank == 0 else ctx
        self.metrics: dict[str, float] | None = None
        self.received = False
        self.task = {"train": False, "evaluate": False}
        self.epochs_per_round: int | None = None
        self.optimizer_states: list[Any] = []

    # ---------------------------------------------------------------- lightning hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._receive_once(trainer, pl_module)
        if self.restore_state and self.optimizer_states:
            for optimizer, state in zip(trainer.optimizers, self.optimizer_states):
                optimizer.load_state_dict(state)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and self.metrics is None:
            self._receive_once(trainer, pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.metrics is not None or not self.received:
            return
        self.metrics = {
            k: float(v.item() if hasattr(v, "item") else v) for k, v in trainer.callback_metrics.items()
        }
        if self.task["evaluate"] and self.rank == 0:
            send(FLModel(metrics=self.metrics), clear_cache=False, ctx=self.ctx)
            self._next_round(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.task["train"]:
            return
        if self.restore_state:
            self.optimizer_states = [opt.state_dict() for opt in trainer.optimizers]
        if self.rank == 0:
            meta = dict(getattr(pl_module, FL_META_KEY, None) or {})
            meta.setdefault(FLMetaKey.NUM_STEPS_CURRENT_ROUND, int(trainer.estimated_stepping_batches))
            params = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            send(FLModel(params=params, metrics=self.metrics, meta=meta), clear_cache=False, ctx=self.ctx)
        self._next_round(trainer)

    # ---------------------------------------------------------------- round state
    def _receive_once(self, trainer: Any, pl_module: Any) -> None:
        if self.received:
            return
        model, flags = None, {"train": False, "evaluate": False}
        if self.rank == 0:
            model = receive(ctx=self.ctx)
            flags = {"train": is_train(ctx=self.ctx), "evaluate": is_evaluate(ctx=self.ctx)}
        model = trainer.strategy.broadcast(model, src=0)
        self.task = trainer.strategy.broadcast(flags, src=0)
        if model is not None and model.params:
            pl_module.load_state_dict(model.params, strict=self.strict)
        self.received = model is not None

    def _next_round(self, trainer: Any) -> None:
        """Ready for the next round: the next fit() trains max_epochs more epochs, without a sanity check."""
        if self.epochs_per_round is None and trainer.max_epochs and trainer.max_epochs > 0:
            self.epochs_per_round = trainer.max_epochs
        if self.epochs_per_round is not None and trainer.current_epoch:
            trainer.fit_loop.max_epochs = trainer.current_epoch + self.epochs_per_round
        trainer.num_sanity_val_steps = 0
        self.metrics, self.received = None, False
        self.task = {"train": False, "evaluate": False}
        if self.rank == 0:
            clear(ctx=self.ctx)
