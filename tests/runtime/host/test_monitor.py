"""A host keeps the system samples of the ranks its senders may speak for, of this job only, and drops the rest
with one warning per sender."""

from __future__ import annotations

import types

from hpcflare.job import JobConfig
from hpcflare.monitoring.system import SystemSampler
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.membership import Membership
from hpcflare.runtime.host.monitor import HostMonitor, payload_bytes
from hpcflare.settings import Settings


def _host(tmp_path, clients_per_rank=2):
    config = JobConfig(
        name="m",
        job_id="m-1",
        num_rounds=2,
        min_clients=1,
        clients=["a", "b", "c", "d"],
        train_script="client.py",
        clients_per_rank=clients_per_rank,
        relays=1,
    )
    return types.SimpleNamespace(
        role="server",
        config=config,
        settings=Settings(),
        log=RankLogger(tmp_path, "server", "server"),
        members=Membership(config.clients, 30),
        hosts={"relay-1": None},
        round=None,
        phase="running",
        _uploading={},
    )


def _wire():
    return {"role": "client rank", "sample": SystemSampler().sample().to_wire()}


def test_samples_are_kept_for_whom_the_sender_may_speak(tmp_path):
    host = _host(tmp_path)
    monitor = HostMonitor(host)
    monitor.take("relay-1", {"client-rank-1": _wire(), "relay-1": {**_wire(), "role": "relay"}})
    monitor.take("a", {"a": {**_wire(), "role": "client"}})
    assert set(monitor.samples) == {"client-rank-1", "relay-1", "a"}
    monitor.take("b", {"c": {**_wire(), "role": "client"}})  # a site speaks only for itself
    monitor.take("relay-1", {f"made-up-{i}": _wire() for i in range(50)})  # names no rank of this job
    monitor.take("d", {"d": {"role": "client", "sample": {"rss_bytes": -5}}})
    monitor.take("d", {"d": {"role": "admin", "sample": _wire()["sample"]}})
    assert set(monitor.samples) == {"client-rank-1", "relay-1", "a"}
    dropped = [
        line for line in (tmp_path / "server.jsonl").read_text().splitlines() if "samples_dropped" in line
    ]
    assert len(dropped) == 3  # b, relay-1, d: one warning each


def test_relays_forward_each_childs_sample_once(tmp_path):
    host = _host(tmp_path)
    monitor = HostMonitor(host)
    monitor.take("relay-1", {"client-rank-2": _wire()})
    first = monitor.heartbeat_samples("relay-1", "relay")["samples"]
    assert set(first) == {"client-rank-2", "relay-1"}
    assert monitor.heartbeat_samples("relay-1", "relay") == {}  # nothing new, and its own not due yet


def test_the_view_counts_sites_bytes_and_ranks(tmp_path):
    import numpy as np

    host = _host(tmp_path)
    monitor = HostMonitor(host)
    monitor.add_bytes("client-rank-1", "in", 100)
    assert payload_bytes({"w": np.zeros(10, np.float32)}) == 40
    view = monitor.view()
    assert view.sites == {s: "pending" for s in "abcd"} and view.link_bytes == {("client-rank-1", "in"): 100}
    assert view.rank_of == {
        "a": "client-rank-1",
        "b": "client-rank-1",
        "c": "client-rank-2",
        "d": "client-rank-2",
    }
    assert "server" in view.samples  # the server samples itself when its view is taken
