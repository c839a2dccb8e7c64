"""Tracking receivers: CSV, TensorBoard, MLflow, Weights & Biases (the last three import their package only
when configured), and the step record they all write.

MLflow and W&B keep one run per site (plus ``global`` for the round means), named after the site, in an experiment /
project named after the job. Options come from the job's ``tracking_config: {mlflow: {...}, wandb: {...}}``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.rank_logger import iso_utc

NUMERIC_KINDS = ("SCALAR", "METRIC")
MAPPING_KINDS = ("SCALARS", "METRICS", "PARAMETERS", "TAGS")
TEXT_KINDS = ("PARAMETER", "TAG", "TEXT")


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


@dataclasses.dataclass
class Record:
    """One validated step record."""

    site: str
    round: int | None
    key: str
    kind: str
    value: Any  # float (SCALAR/METRIC), dict (SCALARS/METRICS/PARAMETERS/TAGS), str (PARAMETER/TAG/TEXT)
    step: int | None
    time: float
    path: str | None = None  # TEXT: the artifact file (MLflowWriter.log_text)

    def scalars(self) -> dict[str, float]:
        """The numbers this record plots: SCALARS 'loss' {'a': 1} is 'loss/a'; METRICS keys stay as they are."""
        if self.kind in NUMERIC_KINDS:
            return numeric({self.key: self.value})
        if self.kind == "SCALARS":
            return {f"{self.key}/{k}": v for k, v in numeric(self.value).items()}
        if self.kind == "METRICS":
            return numeric(self.value)
        return {}

    def texts(self) -> dict[str, str]:
        """PARAMETER(S) / TAG(S) as name -> text."""
        if self.kind in ("PARAMETER", "TAG"):
            return {self.key: str(self.value)}
        if self.kind in ("PARAMETERS", "TAGS"):
            return {str(k): str(v) for k, v in self.value.items()}
        return {}


def parse_record(site: str, raw: Any) -> Record | None:
    """A record from the wire, or None when it is malformed (skipped and reported, never fatal)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        return None
    kind, value = str(raw.get("data_type", "SCALAR")), raw.get("value")
    if kind in NUMERIC_KINDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
    elif kind in MAPPING_KINDS:
        if not isinstance(value, dict):
            return None
    elif kind in TEXT_KINDS:
        value = str(value)
    else:
        return None
    step = raw.get("global_step", raw.get("step"))
    rnd, t = raw.get("round"), raw.get("t")
    path = raw.get("path")
    return Record(
        site,
        rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else None,
        raw["key"][:250],
        kind,
        value,
        step if isinstance(step, int) and not isinstance(step, bool) else None,
        float(t) if isinstance(t, (int, float)) and 0 <= t < 1e11 else time.time(),  # a plausible epoch time
        path[:500] if isinstance(path, str) else None,
    )


class Receiver:
    """One output of the tracker; every method is called under the tracker's lock."""

    def round_metric(self, number: int, site: str, key: str, value: float, now: float) -> None: ...

    def records(self, site: str, records: list[Record]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class CsvReceiver(Receiver):
    def __init__(self, root: Path, job: str, options: dict[str, Any]) -> None:
        self._rounds, self._round_rows = self._open(
            root / "metrics.csv", ["round", "site", "key", "value", "time"]
        )
        self._steps, self._step_rows = self._open(
            root / "steps.csv", ["site", "round", "step", "key", "value", "data_type", "time", "path"]
        )

    @staticmethod
    def _open(path: Path, header: list[str]) -> tuple[Any, Any]:
        new = not path.exists()
        handle = open(path, "a", newline="")  # appended: a resumed job continues the same files
        rows = csv.writer(handle)
        if new:
            rows.writerow(header)
        return handle, rows

    def round_metric(self, number: int, site: str, key: str, value: float, now: float) -> None:
        self._round_rows.writerow([number, site, key, repr(value), iso_utc(now)])

    def records(self, site: str, records: list[Record]) -> None:
        for r in records:
            values = r.scalars() or r.texts() or {r.key: r.value}
            for key, value in values.items():
                self._step_rows.writerow(
                    [
                        site,
                        "" if r.round is None else r.round,
                        "" if r.step is None else r.step,
                        key,
                        repr(value) if isinstance(value, float) else value,
                        r.kind,
                        iso_utc(r.time),
                        r.path or "",
                    ]
                )

    def flush(self) -> None:
        self._rounds.flush()
        self._steps.flush()

    def close(self) -> None:
        self._rounds.close()
        self._steps.close()


class TensorBoardReceiver(Receiver):
    def __init__(self, root: Path, job: str, options: dict[str, Any]) -> None:
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise ConfigError(
                "tracking: tensorboard needs the 'tensorboard' package (pip install 'hpcflare[tracking]')"
            ) from None
        _check_options("tensorboard", options, TENSORBOARD_OPTIONS)
        folder = Path(str(options.get("tb_folder") or "tensorboard"))
        if folder.is_absolute() or ".." in folder.parts or not folder.parts:
            raise ConfigError(
                f"tracking_config.tensorboard.tb_folder {str(folder)!r} must be a folder name under the job's "
                "tracking/ folder"
            )
        self._new_writer = lambda site: EventFileWriter(str(root / folder / site))
        self._writers: dict[str, Any] = {}
        self._auto_steps: dict[tuple[str, str], int] = {}

    def _add(self, site: str, tag: str, value: float, step: int, now: float) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        writer = self._writers.get(site)
        if writer is None:
            writer = self._writers[site] = self._new_writer(site)  # type: ignore[no-untyped-call]
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))

    def round_metric(self, number: int, site: str, key: str, value: float, now: float) -> None:
        # its own tag: a script's SummaryWriter points under the same name are steps, not rounds
        self._add(site, f"{ROUND_TAG}{key}", value, number, now)

    def records(self, site: str, records: list[Record]) -> None:
        for r in records:
            for tag, value in r.scalars().items():
                step = r.step
                if step is None:  # no global_step given: the record's ordinal for this tag
                    step = self._auto_steps.get((site, tag), -1) + 1
                self._auto_steps[(site, tag)] = step
                self._add(site, tag, value, step, r.time)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


TENSORBOARD_OPTIONS = ("tb_folder",)
ROUND_TAG = "round/"
"""TensorBoard tag prefix of the per-round metrics a site sends with its result (FLModel.metrics)."""
MLFLOW_OPTIONS = ("tracking_uri", "experiment_name", "tags")
WANDB_OPTIONS = ("project", "mode", "entity", "group", "tags")


def _check_options(name: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"tracking_config.{name}: unknown key(s) {unknown}; known: {list(known)}")


class MlflowReceiver(Receiver):
    """Metrics, params, tags and text artifacts through MlflowClient (batched: one log_batch per Track call)."""

    def __init__(self, root: Path, job: str, options: dict[str, Any]) -> None:
        _check_options("mlflow", options, MLFLOW_OPTIONS)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "tracking: 'mlflow' needs the mlflow package (pip install 'hpcflare[tracking]')"
            ) from None
        uri = options.get("tracking_uri") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=str(uri))
        name = str(options.get("experiment_name") or job)
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(name, artifact_location=(root / "mlruns").resolve().as_uri())
        )
        self.tags = {str(k): str(v) for k, v in dict(options.get("tags") or {}).items()}
        self.runs: dict[str, str] = {}

    def _run(self, site: str) -> str:
        run_id = self.runs.get(site)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=site, tags={**self.tags, "site": site})
            run_id = self.runs[site] = run.info.run_id
        return run_id

    def round_metric(self, number: int, site: str, key: str, value: float, now: float) -> None:
        self.client.log_metric(self._run(site), key, value, timestamp=int(now * 1000), step=number)

    def records(self, site: str, records: list[Record]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics, params, tags = [], {}, {}
        for r in records:
            for key, value in r.scalars().items():
                metrics.append(Metric(key, value, int(r.time * 1000), r.step or 0))
            if r.kind in ("PARAMETER", "PARAMETERS"):
                params.update(r.texts())
            elif r.kind in ("TAG", "TAGS"):
                tags.update(r.texts())
            elif r.kind == "TEXT":
                self.client.log_text(self._run(site), str(r.value), _artifact_path(r.path))
        run_id = self._run(site)
        for start in range(0, len(metrics), 1000):  # MLflow's per-call limit
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        if params or tags:
            self.client.log_batch(
                run_id,
                params=[Param(k[:250], v[:6000]) for k, v in params.items()],
                tags=[RunTag(k[:250], v[:5000]) for k, v in tags.items()],
            )

    def close(self) -> None:
        for run_id in self.runs.values():
            self.client.set_terminated(run_id)
        self.runs.clear()


def _artifact_path(path: str | None) -> str:
    """A run-relative artifact path: no absolute paths, no '..' (the site chose it)."""
    parts = [p for p in (path or "text.txt").replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "text.txt"


class WandbReceiver(Receiver):
    """Offline W&B runs by default (``mode: online`` needs WANDB_API_KEY and internet on the server's node)."""

    def __init__(self, root: Path, job: str, options: dict[str, Any]) -> None:
        _check_options("wandb", options, WANDB_OPTIONS)
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "tracking: 'wandb' needs the wandb package (pip install 'hpcflare[wandb]')"
            ) from None
        self.wandb, self.dir = wandb, root / "wandb"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.options: dict[str, Any] = {
            "project": str(options.get("project") or job),
            "mode": str(options.get("mode") or "offline"),
            "entity": options.get("entity"),
            "group": options.get("group") or job,
            "tags": list(options.get("tags") or []),
        }
        os.environ.setdefault("WANDB_SILENT", "true")
        self.runs: dict[str, Any] = {}

    def _run(self, site: str) -> Any:
        run = self.runs.get(site)
        if run is None:
            run = self.runs[site] = self.wandb.init(
                name=site, dir=str(self.dir), reinit="create_new", config={"site": site}, **self.options
            )
        return run

    def round_metric(self, number: int, site: str, key: str, value: float, now: float) -> None:
        self._run(site).log({f"round/{key}": value, "round": number})

    def records(self, site: str, records: list[Record]) -> None:
        run = self._run(site)
        for r in records:
            scalars = r.scalars()
            if scalars:  # W&B steps must only grow per run; the script's own step goes along as a field
                run.log({**scalars, "global_step": r.step} if r.step is not None else scalars)
            elif r.kind in ("PARAMETER", "PARAMETERS", "TAG", "TAGS"):
                run.config.update(r.texts(), allow_val_change=True)

    def close(self) -> None:
        deadline = time.monotonic() + 30
        for run in self.runs.values():
            if time.monotonic() < deadline:
                run.finish()
        self.runs.clear()
