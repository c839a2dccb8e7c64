"""Per-round checkpoints: durable when save() returns; a failed write names itself and keeps the last one."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.checkpoints import Checkpoints
from hpcflare.runtime.host.global_model import GlobalModel


def model(value: float, version: int) -> GlobalModel:
    return GlobalModel({"w": np.full(1 << 18, value, np.float32), "b": np.arange(3, dtype=np.int64)}, version)


def test_a_checkpoint_is_complete_when_save_returns_and_replaces_the_last(tmp_path):
    ckpt = Checkpoints(tmp_path, RankLogger(None, "server", "server"))
    ckpt.save(model(1.0, 1), 1, {})
    loaded, number, state = ckpt.load()
    assert number == 1 and state is None
    np.testing.assert_array_equal(loaded.params["w"], np.full(1 << 18, 1.0, np.float32))
    ckpt.save(model(2.0, 2), 2, {"m": np.ones(2, np.float32)})
    assert ckpt.latest().name == "checkpoint-2.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2.safetensors",
        "checkpoint.json",
        "strategy_state-2.safetensors",
    ]  # round 1's files gone


def test_a_failed_checkpoint_write_is_raised_and_keeps_the_last_one(tmp_path, monkeypatch):
    log = RankLogger(tmp_path / "logs", "server", "server")
    ckpt = Checkpoints(tmp_path, log)
    ckpt.save(model(1.0, 1), 1, {})

    def full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GlobalModel, "save", full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save(model(2.0, 2), 2, {})
    monkeypatch.undo()
    assert ckpt.latest().name == "checkpoint-1.safetensors"  # the record still names the last complete one
    log.close()
    assert "round 2: checkpoint could not be written" in (tmp_path / "logs" / "server.log").read_text()
