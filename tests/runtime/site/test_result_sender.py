"""The site's result side on its own: the typed header, DIFF transfers, late and refused results."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.runtime.site.result_sender import ResultSender
from hpcflare.runtime.site.tasks import TaskFetcher
from hpcflare.runtime.site.track_records import TrackBuffer
from hpcflare.transport.api import Rpc, UpdateKind
from tests.runtime.site.conftest import MODEL, events


def sender(link, **kwargs):
    connection, parent = link(**kwargs)
    connection.start()
    tasks = TaskFetcher(connection.job_dir, connection, connection.log)
    results = ResultSender(
        connection.job_dir, connection, connection.log, TrackBuffer(connection, connection.log)
    )
    parent.tasks = [parent.task(4)]
    task = tasks.next_task(timeout=30)
    return results, task, results.received(task, tasks.fetch(task)), parent


def test_a_result_arrives_with_a_typed_header_and_its_tensors(link):
    results, task, model, parent = sender(link)
    update = {k: v + 1 for k, v in model.items()}
    results.send(task, update, "FULL", {"NUM_STEPS_CURRENT_ROUND": 7, 3: "dropped"}, {"loss": 0.5})
    ((header, params),) = parent.uploads
    assert (header.site, header.token, header.task_id, header.round) == ("site-1", "token-1", "task-4", 4)
    assert header.params_type == UpdateKind.FULL and header.metrics == {"loss": 0.5}
    assert header.meta == {"NUM_STEPS_CURRENT_ROUND": 7}  # only string keys cross the wire
    assert header.staged is header.quant is header.partial is None
    for name in MODEL:
        np.testing.assert_array_equal(params[name], MODEL[name] + 1)
    (sent,) = events(results.connection.job_dir, "result_sent")
    assert sent["round"] == 4 and sent["metrics"] == {"loss": 0.5}


def test_params_transfer_type_diff_sends_the_difference(link):
    results, task, model, parent = sender(link, params_transfer_type="DIFF")
    results.send(task, {k: v * 3 for k, v in model.items()}, "FULL", {}, {})
    ((header, params),) = parent.uploads
    assert header.params_type == UpdateKind.DIFF
    np.testing.assert_array_equal(params["w"], MODEL["w"] * 2)


def test_a_late_result_is_logged_not_raised(link):
    results, task, model, parent = sender(link)
    parent.fail[Rpc.UPLOAD] = [errors.StaleTaskError("round 4 closed")]
    results.send(task, model, "FULL", {}, {})
    assert parent.uploads == []
    (late,) = events(results.connection.job_dir, "result_late")
    assert "round 4 closed" in late["msg"]


def test_a_refused_result_reaches_the_script(link):
    results, task, model, parent = sender(link)
    parent.fail[Rpc.UPLOAD] = [errors.UpdateRejectedError("tensor 'w' contains NaN")]
    with pytest.raises(errors.UpdateRejectedError, match="NaN"):
        results.send(task, model, "FULL", {}, {})
    assert events(results.connection.job_dir, "result_rejected")


def test_an_upload_to_a_parent_that_is_down_is_sent_once_it_is_back(link):
    results, task, model, parent = sender(link, settings={"server_lost_timeout": 60})
    back = parent.restart(after=1.0)
    results.send(task, model, "FULL", {}, {})
    back.join()
    assert len(parent.uploads) == 1
