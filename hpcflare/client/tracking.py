"""NVFlare's tracking writers (``nvflare.client.tracking``): the same classes and signatures.

Each call becomes one tracking record (site, round, step, key, value) sent to the server, which writes it to
the job's tracking receivers (CSV, TensorBoard, MLflow, W&B: job option ``tracking``). Scripts keep their
``writer.add_scalar(...)`` / ``mlflow.log_metric(...)`` lines; nothing is written on the site.
"""

from __future__ import annotations

from typing import Any

from hpcflare.client.api import APIContext, log
from hpcflare.client.constants import LogWriterName
from hpcflare.client.model import AnalyticsDataType

__all__ = ["MLflowWriter", "SummaryWriter", "TBWriter", "WandBWriter"]


class _Writer:
    writer_name = ""

    def __init__(self, ctx: APIContext | None = None) -> None:
        self.ctx = ctx

    def _log(self, key: str, value: Any, kind: AnalyticsDataType, **kwargs: Any) -> bool:
        return log(key, value, kind, ctx=self.ctx, writer=self.writer_name, **kwargs)

    def get_writer_name(self) -> str:
        return self.writer_name


class SummaryWriter(_Writer):
    """TensorBoard's ``SummaryWriter`` calls (``torch.utils.tensorboard``), sent to the server."""

    writer_name = LogWriterName.TORCH_TB

    def add_scalar(self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any) -> None:
        self._log(tag, scalar, AnalyticsDataType.SCALAR, global_step=global_step, **kwargs)

    def add_scalars(self, tag: str, scalars: dict, global_step: int | None = None, **kwargs: Any) -> None:
        self._log(tag, scalars, AnalyticsDataType.SCALARS, global_step=global_step, **kwargs)

    def flush(self) -> None:
        """Send what is buffered now (records also go before each result and at the script's end)."""
        from hpcflare.client.api import _ctx

        _ctx(self.ctx).agent.tracks.flush()


TBWriter = SummaryWriter


class WandBWriter(_Writer):
    writer_name = LogWriterName.WANDB

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._log("metrics", metrics, AnalyticsDataType.METRICS, global_step=step)


class MLflowWriter(_Writer):
    """The ``mlflow`` module's logging calls, sent to the server's MLflow receiver (and CSV/TensorBoard)."""

    writer_name = LogWriterName.MLFLOW

    def log_param(self, key: str, value: Any) -> None:
        self._log(key, value, AnalyticsDataType.PARAMETER)

    def log_params(self, values: dict) -> None:
        self._log("params", values, AnalyticsDataType.PARAMETERS)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self._log(key, value, AnalyticsDataType.METRIC, global_step=step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._log("metrics", metrics, AnalyticsDataType.METRICS, global_step=step)

    def log_text(self, text: str, artifact_file_path: str) -> None:
        self._log("text", text, AnalyticsDataType.TEXT, path=artifact_file_path)

    def set_tag(self, key: str, tag: Any) -> None:
        self._log(key, tag, AnalyticsDataType.TAG)

    def set_tags(self, tags: dict) -> None:
        self._log("tags", tags, AnalyticsDataType.TAGS)
