"""A rank's system sample: real figures for this process, and a peer's sample checked before it is kept."""

from __future__ import annotations

import math

import pytest

from hpcflare.errors import MalformedMessageError
from hpcflare.monitoring.system import SystemSample, SystemSampler, _visible


def test_a_sample_describes_this_process_and_round_trips():
    sampler = SystemSampler()
    sum(i * i for i in range(300_000))  # some CPU to measure
    sample = sampler.sample()
    assert sample.rss_bytes > 10 << 20 and sample.threads >= 1 and sample.open_fds >= 3
    assert 0 < sample.host_memory_used_bytes < sample.host_memory_total_bytes
    assert sample.cpu_seconds > 0 and math.isfinite(sample.cpu_percent) and sample.host
    assert SystemSample.from_wire(sample.to_wire()) == sample


def test_samples_are_due_once_per_interval_and_link():
    sampler = SystemSampler()
    assert sampler.due("a", 60) is not None
    assert sampler.due("a", 60) is None  # within the interval
    assert sampler.due("b", 60) is not None  # another heartbeat stream keeps its own clock


@pytest.mark.parametrize(
    "change",
    [
        {"rss_bytes": -1},
        {"cpu_percent": float("nan")},
        {"load1": float("inf")},
        {"threads": "many"},
        {"threads": True},
        {"open_fds": 1e30},
        {"host": "x" * 300},
        {"gpus": [{"index": 0}]},
        {"gpus": ["gpu"]},
        {"gpus": [{"index": 0, "utilization": 0.5, "memory_used_bytes": 1, "memory_total_bytes": 2}] * 65},
    ],
)
def test_a_malformed_sample_is_refused(change):
    good = SystemSampler().sample().to_wire()
    with pytest.raises(MalformedMessageError):
        SystemSample.from_wire({**good, **change})


def test_gpu_visibility_follows_cuda_visible_devices():
    assert _visible(None, 4) == [0, 1, 2, 3]
    assert _visible("", 4) == []
    assert _visible("2,0", 4) == [2, 0]
    assert _visible("7", 4) == []
    assert _visible("GPU-5d1c-uuid", 2) == [0, 1]  # UUIDs: NVML's own order, all of them
