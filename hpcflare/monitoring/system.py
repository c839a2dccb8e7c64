"""What one rank's process and host look like now: CPU, memory, threads, open files, load, GPUs.

Every rank samples itself (:class:`SystemSampler`) and sends the sample upstream in its heartbeats at most every
``settings.metrics_interval`` seconds; relays forward their children's samples in their own heartbeats, so the
server hears about every rank without any rank contacting it for metrics. GPU figures come from NVIDIA's
management library (``hpcflare[gpu]``: nvidia-ml-py) when a GPU is visible, and are left out cleanly otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil

from hpcflare.errors import MalformedMessageError

MAX_GPUS = 64
"""GPUs one sample may describe (a node has at most a few dozen)."""


@dataclasses.dataclass(frozen=True)
class GpuSample:
    index: int
    utilization: float
    """0..1 of the last sampling period (NVML's utilization.gpu)."""
    memory_used_bytes: int
    memory_total_bytes: int


@dataclasses.dataclass(frozen=True)
class SystemSample:
    """One rank's process and host at time ``t`` (seconds since the epoch)."""

    t: float
    cpu_percent: float
    """The process's CPU use since its previous sample, in percent of one core (400 = four cores busy)."""
    cpu_seconds: float
    rss_bytes: int
    threads: int
    open_fds: int
    load1: float
    host_memory_used_bytes: int
    host_memory_total_bytes: int
    host: str = ""
    gpus: tuple[GpuSample, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["gpus"] = [dataclasses.asdict(g) for g in self.gpus]
        return out

    @classmethod
    def from_wire(cls, data: Any) -> SystemSample:
        """A sample another rank sent, checked: numbers finite and non-negative, strings short, GPUs few.
        MalformedMessageError otherwise (the caller drops that sample, never the heartbeat)."""
        if not isinstance(data, Mapping):
            raise MalformedMessageError("a system sample must be a mapping")
        gpus = data.get("gpus") or []
        if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
            raise MalformedMessageError(f"a system sample may describe at most {MAX_GPUS} GPUs")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in ("gpus", "host"):
                continue
            values[field.name] = _number(data, field.name, int if field.type in ("int", int) else float)
        host = data.get("host", "")
        if not isinstance(host, str) or len(host) > 255:
            raise MalformedMessageError("a system sample's host must be a short string")
        parsed = []
        for g in gpus:
            if not isinstance(g, Mapping):
                raise MalformedMessageError("a GPU sample must be a mapping")
            parsed.append(
                GpuSample(
                    index=_number(g, "index", int),
                    utilization=min(1.0, _number(g, "utilization", float)),
                    memory_used_bytes=_number(g, "memory_used_bytes", int),
                    memory_total_bytes=_number(g, "memory_total_bytes", int),
                )
            )
        return cls(**values, host=host, gpus=tuple(parsed))


def _number(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise MalformedMessageError(
            f"system sample field {key!r} must be a finite number >= 0, got {value!r:.40}"
        )
    if value > 1e18:
        raise MalformedMessageError(f"system sample field {key!r} is out of range ({value!r:.40})")
    return kind(value)


class _Gpus:
    """NVML, opened once per process; absent (no library, no driver, no GPU) means no GPU figures."""

    def __init__(self) -> None:
        self.handles: list[tuple[int, Any]] = []
        self.nvml: Any = None
        try:
            import pynvml  # type: ignore[import-untyped]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # noqa: BLE001 - no library, no driver, no device: the sample has no GPUs
            return
        visible = _visible(os.environ.get("CUDA_VISIBLE_DEVICES"), count)
        self.nvml = pynvml
        self.handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in visible]

    def sample(self) -> tuple[GpuSample, ...]:
        out = []
        for index, handle in self.handles:
            try:
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # noqa: BLE001 - a GPU that fell off the bus is reported by the job, not here
                continue
            out.append(GpuSample(index, rates.gpu / 100.0, int(memory.used), int(memory.total)))
        return tuple(out)


def _visible(spec: str | None, count: int) -> list[int]:
    """The physical GPU indices a process may use: CUDA_VISIBLE_DEVICES' numbers (UUIDs and MIG names: all)."""
    if spec is None or not spec.strip():
        return list(range(count)) if spec is None else []
    picked = []
    for part in spec.split(","):
        part = part.strip()
        if not part.isdigit():
            return list(range(count))
        if int(part) < count:
            picked.append(int(part))
    return picked


class SystemSampler:
    """This process's sampler (one per process, :func:`sampler`); thread-safe."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._last_cpu = (time.monotonic(), sum(self._process.cpu_times()[:2]))
        self._gpus: _Gpus | None = None
        self._sent: dict[str, float] = {}

    def sample(self) -> SystemSample:
        with self._lock:
            if self._gpus is None:
                self._gpus = _Gpus()
            now, times = time.monotonic(), self._process.cpu_times()
            cpu = times.user + times.system
            then, before = self._last_cpu
            self._last_cpu = (now, cpu)
            memory = psutil.virtual_memory()
            try:
                fds = self._process.num_fds()
            except (AttributeError, psutil.Error):  # not on this platform
                fds = 0
            return SystemSample(
                t=time.time(),
                cpu_percent=100.0 * max(0.0, cpu - before) / max(now - then, 1e-3),
                cpu_seconds=cpu,
                rss_bytes=int(self._process.memory_info().rss),
                threads=self._process.num_threads(),
                open_fds=fds,
                load1=os.getloadavg()[0],
                host_memory_used_bytes=int(memory.total - memory.available),
                host_memory_total_bytes=int(memory.total),
                host=os.environ.get("SLURMD_NODENAME") or os.uname().nodename,
                gpus=self._gpus.sample(),
            )

    def due(self, link: str, interval: float) -> SystemSample | None:
        """A sample for ``link`` (a heartbeat stream) when its last one is ``interval`` seconds old, else None."""
        now = time.monotonic()
        with self._lock:
            if now - self._sent.get(link, -math.inf) < interval:
                return None
            self._sent[link] = now
        return self.sample()


_SAMPLER: SystemSampler | None = None
_SAMPLER_LOCK = threading.Lock()


def sampler() -> SystemSampler:
    """The process's one sampler (SimEnv runs many ranks in one process: they share it)."""
    global _SAMPLER
    with _SAMPLER_LOCK:
        if _SAMPLER is None:
            _SAMPLER = SystemSampler()
        return _SAMPLER
