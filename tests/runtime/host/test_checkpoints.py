"""Per-round checkpoints are written in the background, and nothing reads them before they are complete."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.checkpoints import Checkpoints
from hpcflare.runtime.host.global_model import GlobalModel


def model(value: float, version: int) -> GlobalModel:
    return GlobalModel({"w": np.full(1 << 18, value, np.float32), "b": np.arange(3, dtype=np.int64)}, version)


def test_a_checkpoint_written_in_the_background_is_complete_when_read(tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path, RankLogger(None, "server", "server"))
    release = threading.Event()
    real_save = GlobalModel.save
    monkeypatch.setattr(GlobalModel, "save", lambda self, path: release.wait(10) and real_save(self, path))
    ckpt.save(model(1.0, 1), 1, {})
    assert not (tmp_path / "checkpoint.json").exists()  # save() returned before the file was written
    threading.Timer(0.2, release.set).start()
    loaded, number, state = ckpt.load()  # waits for the write in flight
    assert number == 1 and state is None
    np.testing.assert_array_equal(loaded.params["w"], np.full(1 << 18, 1.0, np.float32))
    ckpt.save(model(2.0, 2), 2, {"m": np.ones(2, np.float32)})
    assert ckpt.latest().name == "checkpoint-2.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2.safetensors",
        "checkpoint.json",
        "strategy_state-2.safetensors",
    ]  # round 1's files gone


def test_a_failed_checkpoint_write_fails_the_next_reader(tmp_path, monkeypatch):
    log = RankLogger(tmp_path / "logs", "server", "server")
    ckpt = Checkpoints(tmp_path, log)
    ckpt.save(model(1.0, 1), 1, {})
    ckpt.wait()

    def full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GlobalModel, "save", full)
    ckpt.save(model(2.0, 2), 2, {})
    with pytest.raises(OSError, match="No space left"):
        ckpt.latest()
    monkeypatch.undo()
    assert ckpt.latest().name == "checkpoint-1.safetensors"  # the record still names the last complete one
    log.close()
    assert "round 2: checkpoint could not be written" in (tmp_path / "logs" / "server.log").read_text()
