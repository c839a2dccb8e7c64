"""The server's per-round checkpoints: what a requeued or restarted job resumes from.

Each round's model goes to a new file (``checkpoint-<round>.safetensors``, plus the strategy's state if it
has any); only then does ``checkpoint.json`` switch to it, and only after that is the previous round's file
deleted. A crash at any point leaves a record that names a complete file with a matching checksum.

:meth:`Checkpoints.save` returns once the checkpoint is durable: the server reports a round completed (log,
status, tracking, best-model selection) only after that, so a kill between the two can never leave logs that
claim a round the job would not resume from. A failed write fails the job with its cause.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.fileio import atomic_link, atomic_write_json, sha256_file
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.transport.codec import write_safetensors
from hpcflare.transport.model_files import load_params

RECORD = "checkpoint.json"


class Checkpoints:
    def __init__(self, models_dir: Path, log: RankLogger, model_file_bytes: int = 1 << 62) -> None:
        """``model_file_bytes``: a resumed model at least this large goes to a spool file (settings.model_file_bytes)."""
        self.model_file_bytes = model_file_bytes
        self.models_dir, self.log = models_dir, log

    @property
    def record(self) -> Path:
        return self.models_dir / RECORD

    def _read(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.record.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            self.log.warning(
                "checkpoint_invalid", f"{self.record} is not valid JSON; starting from the initial model"
            )
            return None
        return meta if isinstance(meta, dict) else None

    def latest(self) -> Path | None:
        """The last completed round's model file, if any."""
        meta = self._read()
        return self.models_dir / str(meta["file"]) if meta and meta.get("file") else None

    def load(self) -> tuple[GlobalModel, int, dict[str, np.ndarray] | None] | None:
        """(model, completed round, strategy state) of the last checkpoint, verified by checksum; None if none."""
        meta = self._read()
        if meta is None:
            return None
        path = self.models_dir / str(meta.get("file"))
        if not path.is_file() or sha256_file(path) != meta.get("sha256"):
            self.log.warning(
                "checkpoint_invalid", f"checkpoint {path} missing or corrupt; starting from the initial model"
            )
            return None
        number = int(meta["round"])
        state_file = meta.get("strategy_state")
        if state_file is True:  # a record written before state files were versioned
            state_file = "strategy_state.safetensors"
        state = None
        if isinstance(state_file, str) and (self.models_dir / state_file).is_file():
            state = load_params(self.models_dir / state_file)
        params = load_params(path, mapped=True)
        in_file = sum(value.nbytes for value in params.values()) >= self.model_file_bytes
        return GlobalModel(params, number, in_file=in_file), number, state

    def save(self, model: GlobalModel, number: int, strategy_state: Mapping[str, np.ndarray]) -> None:
        """Round ``number``'s model (and the strategy's state) become the checkpoint to resume from, durably,
        before this returns; a failed write is logged and raised."""
        state_name = None
        if strategy_state:  # optimizer moments etc.: written before the record that refers to them
            state_name = f"strategy_state-{number}.safetensors"
            write_safetensors(self.models_dir / state_name, strategy_state)
        try:
            self._commit(model, number, state_name)
        except BaseException as exc:
            self.log.error(
                "checkpoint_failed", f"round {number}: checkpoint could not be written: {exc}", round=number
            )
            raise

    def _commit(self, model: GlobalModel, number: int, state_name: str | None) -> None:
        before = self._read() or {}
        path = self.models_dir / f"checkpoint-{number}.safetensors"
        saved = model.save(path)
        atomic_write_json(
            self.record,
            {
                "round": number,
                "file": path.name,
                "sha256": saved["sha256"],
                "time": time.time(),
                "strategy_state": state_name,
            },
        )
        for key in ("file", "strategy_state"):  # the previous round's files, now that nothing refers to them
            old = before.get(key)
            if isinstance(old, str) and old not in (path.name, state_name):
                (self.models_dir / old).unlink(missing_ok=True)

    def publish_result(self, model: GlobalModel, result: Path) -> None:
        """The result is the last checkpoint's file: hard-link it rather than writing the model again."""
        latest = self.latest()
        if latest is not None and latest.is_file():
            atomic_link(latest, result)
        else:  # no checkpoint: no round ran
            model.save(result)
