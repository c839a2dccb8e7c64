"""The site's task side on its own: long-polling for the next task, the job's end, the model's sources."""

from __future__ import annotations

import numpy as np

from hpcflare.runtime.site.tasks import TaskFetcher
from hpcflare.transport.api import Rpc
from tests.runtime.site.conftest import MODEL, events


def fetcher(link, **kwargs):
    connection, parent = link(**kwargs)
    connection.start()
    return TaskFetcher(connection.job_dir, connection, connection.log), parent


def test_waits_through_wait_replies_then_takes_the_task(link):
    tasks, parent = fetcher(link)
    parent.tasks = [{"task": "wait"}, {"task": "wait"}, parent.task(2, meta={"lr": 0.1})]
    task = tasks.next_task(timeout=30, last_task_id="task-1")
    assert (task.name, task.task_id, task.round, task.meta) == ("train", "task-2", 2, {"lr": 0.1})
    assert [s.name for s in task.manifest] == list(parent.model.params) and tasks.pending is task
    assert all(r["last_task_id"] == "task-1" for r in parent.called(Rpc.GET_TASK))
    assert len(parent.called(Rpc.GET_TASK)) == 3


def test_the_end_of_the_job_is_remembered(link):
    tasks, parent = fetcher(link)
    parent.tasks = [{"task": "end", "reason": "completed"}]
    assert tasks.next_task(timeout=30) is None
    assert tasks.ended and tasks.end_reason == "completed"
    asked = len(parent.called(Rpc.GET_TASK))
    assert (
        tasks.next_task(timeout=30) is None and len(parent.called(Rpc.GET_TASK)) == asked
    )  # not asked again


def test_a_timeout_with_no_task_returns_none(link):
    tasks, _ = fetcher(link)
    assert tasks.next_task(timeout=0.5) is None and not tasks.ended


def test_the_model_is_pulled_from_the_parent(link):
    tasks, parent = fetcher(link)
    parent.tasks = [parent.task()]
    params = tasks.fetch(tasks.next_task(timeout=30))
    for name, value in MODEL.items():
        np.testing.assert_array_equal(params[name], value)
    (event,) = events(tasks.connection.job_dir, "model_received")
    assert event["via"] in ("grpc", "shared memory")


def test_a_corrupt_staged_model_falls_back_to_the_parent(link):
    tasks, parent = fetcher(link, staging=True)
    root = tasks.connection.config.staging_root(tasks.connection.job_dir.root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "m.safetensors").write_bytes(b"not a model")
    parent.tasks = [parent.task(staged={"file": "models/m.safetensors", "nbytes": 11, "sha256": "0" * 64})]
    params = tasks.fetch(tasks.next_task(timeout=30))
    np.testing.assert_array_equal(params["w"], MODEL["w"])
    (fallback,) = events(tasks.connection.job_dir, "staging_fallback")
    assert "checksum mismatch" in fallback["reason"]
