"""The server's per-round checkpoints: what a requeued or restarted job resumes from.

Each round's model goes to a new file (``checkpoint-<round>.safetensors``, plus the strategy's state if it
has any); only then does ``checkpoint.json`` switch to it, and only after that is the previous round's file
deleted. A crash at any point leaves a record that names a complete file with a matching checksum.

The model file is written by a background thread while the next round already runs (its blobs never change):
at 100 MB+ writing and hashing it was a tenth of a round. Anything that reads the record (latest, load, the
result, the next save) first waits for the write in flight, and a failed write fails the job there.
"""

from __future__ import annotations

import json
import threading
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
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None

    def wait(self) -> None:
        """Let the checkpoint write in flight finish; raise what made it fail."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

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
        self.wait()
        meta = self._read()
        return self.models_dir / str(meta["file"]) if meta and meta.get("file") else None

    def load(self) -> tuple[GlobalModel, int, dict[str, np.ndarray] | None] | None:
        """(model, completed round, strategy state) of the last checkpoint, verified by checksum; None if none."""
        self.wait()
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
        """Round ``number``'s model (and the strategy's state) become the checkpoint to resume from; the model is
        written in the background (see the module's docstring), the strategy's state (it may change next round)
        before this returns."""
        self.wait()
        state_name = None
        if strategy_state:  # optimizer moments etc.: written before the record that refers to them
            state_name = f"strategy_state-{number}.safetensors"
            write_safetensors(self.models_dir / state_name, strategy_state)

        def write() -> None:
            try:
                self._commit(model, number, state_name)
            except BaseException as exc:  # noqa: BLE001 - raised by the next wait()
                self.log.error(
                    "checkpoint_failed",
                    f"round {number}: checkpoint could not be written: {exc}",
                    round=number,
                )
                self._failure = exc

        self._writer = threading.Thread(target=write, name=f"checkpoint-{number}", daemon=True)
        self._writer.start()

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
