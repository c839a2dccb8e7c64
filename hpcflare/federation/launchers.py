"""How a standing server starts a job's server rank and a site agent its client ranks: a small Launcher
interface with one implementation per backend, picked by name from server.yaml / site.yaml.

    local   a process of its own session on this machine (it outlives an agent restart)
    slurm   an sbatch job on this machine's Slurm cluster, with the account/partition/qos/gres/time the
            institution configures (and the job may ask for, within the site's limits)

One launch may hold several tasks (an institution's relay and client ranks): the local launcher starts them
side by side, each told its rank (HPCFLARE_RANK), the Slurm launcher asks for that many tasks and starts them
with srun. Every launch runs under :mod:`hpcflare.federation.rankwrap`, which leaves its exit code in a file:
a launcher restarted mid-job reads how its ranks ended from there. A launch record is plain JSON (kept in the
job's record), so any later life of the agent can look after the rank.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from hpcflare.errors import ConfigError
from hpcflare.fileio import atomic_write_text


class RankState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"
    LOST = "lost"


@dataclasses.dataclass
class RankStatus:
    state: RankState
    detail: str = ""
    exit_code: int | None = None


@dataclasses.dataclass
class Resources:
    """What one rank may use: the launcher's defaults, narrowed by what a job asks (within the site's limits)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    time_minutes: int | None = None
    extra: list[str] = dataclasses.field(default_factory=list)


class Launcher(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, defaults: Resources | None = None) -> None:
        self.defaults = defaults or Resources()

    @abc.abstractmethod
    def start(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        workdir: Path,
        resources: Resources,
        tasks: int = 1,
    ) -> dict[str, Any]:
        """Start ``command`` as rank ``name`` (``tasks`` > 1: that many tasks, each told its rank as srun does);
        return the launch record (JSON) that status/cancel take."""

    @abc.abstractmethod
    def status(self, record: Mapping[str, Any]) -> RankStatus: ...

    @abc.abstractmethod
    def cancel(self, record: Mapping[str, Any]) -> None: ...

    def describe(self) -> str:
        return self.kind

    @staticmethod
    def wrapped(exit_file: Path, command: list[str], tasks: int = 1) -> list[str]:
        many = ["--tasks", str(tasks)] if tasks > 1 else []
        return [sys.executable, "-m", "hpcflare.federation.rankwrap", str(exit_file), *many, "--", *command]

    @staticmethod
    def exit_code(record: Mapping[str, Any]) -> int | None:
        try:
            return int(Path(str(record["exit_file"])).read_text().strip())
        except (FileNotFoundError, ValueError, KeyError):
            return None


class LocalLauncher(Launcher):
    kind = "local"

    def __init__(self, defaults: Resources | None = None) -> None:
        super().__init__(defaults)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        workdir: Path,
        resources: Resources,
        tasks: int = 1,
    ) -> dict[str, Any]:
        workdir.mkdir(parents=True, exist_ok=True)
        exit_file, output = workdir / f"{name}.exit", workdir / f"{name}.out"
        exit_file.unlink(missing_ok=True)
        with open(output, "ab") as out:
            proc = subprocess.Popen(
                self.wrapped(exit_file, command, tasks),
                env={**os.environ, **env},
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this agent: a restarted agent re-attaches to it
            )
        self._children[proc.pid] = proc
        return {"kind": self.kind, "pid": proc.pid, "exit_file": str(exit_file), "output": str(output)}

    def status(self, record: Mapping[str, Any]) -> RankStatus:
        pid = int(record.get("pid") or 0)
        code = self.exit_code(record)
        if code is not None:
            self._running(record)  # reaps our child
            return RankStatus(RankState.EXITED, exit_code=code)
        if self._running(record):
            return RankStatus(RankState.RUNNING, f"pid {pid}")
        code = self.exit_code(record)  # it may have ended between the two looks
        if code is not None:
            return RankStatus(RankState.EXITED, exit_code=code)
        return RankStatus(
            RankState.LOST,
            f"process {pid} ended without leaving its exit code (killed with SIGKILL, or the machine restarted); "
            f"its output is in {record.get('output')}",
        )

    def _running(self, record: Mapping[str, Any]) -> bool:
        """Is the rank's wrapper still running? Our own child is, while it has not exited (even as it still
        execs); one a previous life of the agent started is looked up by pid and command line."""
        pid = int(record.get("pid") or 0)
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:
                return True
            self._children.pop(pid, None)
            return False
        return bool(pid) and self._alive(pid, str(record.get("exit_file")))

    @staticmethod
    def _alive(pid: int, exit_file: str) -> bool:
        """Is ``pid`` still our wrapper (not a recycled pid)?"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            try:
                os.kill(pid, 0)
            except OSError:
                return False
            return True  # no /proc: trust the pid
        return exit_file.encode() in cmdline and b"rankwrap" in cmdline

    def cancel(self, record: Mapping[str, Any]) -> None:
        pid = int(record.get("pid") or 0)
        if self._running(record):
            try:
                os.kill(pid, signal.SIGTERM)  # the wrapper passes it on to the rank
            except OSError:
                pass


class SlurmLauncher(Launcher):
    kind = "slurm"

    def __init__(self, defaults: Resources | None = None) -> None:
        super().__init__(defaults)
        from hpcflare.slurm import SlurmCommands

        self.slurm = SlurmCommands()

    def describe(self) -> str:
        d = self.defaults
        parts = [
            f"{k}={v}" for k, v in (("partition", d.partition), ("account", d.account), ("qos", d.qos)) if v
        ]
        return "slurm" + (f" ({', '.join(parts)})" if parts else "")

    def script(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        workdir: Path,
        resources: Resources,
        tasks: int = 1,
    ) -> str:
        options = [f"--job-name=hpcflare-{name}", f"--output={workdir / name}-%j.out", f"--ntasks={tasks}"]
        for key in ("partition", "account", "qos", "gres"):
            value = getattr(resources, key) or getattr(self.defaults, key)
            if value:
                options.append(f"--{key}={value}")
        minutes = resources.time_minutes or self.defaults.time_minutes
        if minutes:
            options.append(f"--time={int(minutes)}")
        options += [*self.defaults.extra, *resources.extra]
        lines = ["#!/bin/bash", *(f"#SBATCH {shlex.quote(o)}" for o in options)]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        lines.append(f"cd {shlex.quote(str(workdir))}")
        if tasks > 1:  # srun numbers the tasks (SLURM_PROCID) and spreads them over the job's nodes
            command = ["srun", "--kill-on-bad-exit=0", *command]
        lines.append("exec " + shlex.join(self.wrapped(workdir / f"{name}.exit", command)))
        return "\n".join(lines) + "\n"

    def start(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        workdir: Path,
        resources: Resources,
        tasks: int = 1,
    ) -> dict[str, Any]:
        workdir.mkdir(parents=True, exist_ok=True)
        exit_file = workdir / f"{name}.exit"
        exit_file.unlink(missing_ok=True)
        script = workdir / f"{name}.sbatch"
        atomic_write_text(script, self.script(name, command, env, workdir, resources, tasks))
        job_id = self.slurm.submit(script)
        return {
            "kind": self.kind,
            "slurm_job_id": job_id,
            "exit_file": str(exit_file),
            "output": str(workdir),
        }

    def status(self, record: Mapping[str, Any]) -> RankStatus:
        code = self.exit_code(record)
        if code is not None:
            return RankStatus(RankState.EXITED, exit_code=code)
        job_id = str(record.get("slurm_job_id"))
        state = self.slurm.state(job_id)
        if state == "PENDING":
            return RankStatus(
                RankState.PENDING, f"Slurm job {job_id} pending ({self.slurm.pending_reason(job_id)})"
            )
        if state in ("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "UNKNOWN"):
            return RankStatus(RankState.RUNNING, f"Slurm job {job_id} {state.lower()}")
        code = self.exit_code(record)
        if code is not None:
            return RankStatus(RankState.EXITED, exit_code=code)
        return RankStatus(
            RankState.LOST,
            f"Slurm job {job_id} ended {state} before its rank left an exit code (time limit, node failure, "
            "out of memory or scancel); `sacct -j " + job_id + "` has the details",
        )

    def cancel(self, record: Mapping[str, Any]) -> None:
        if record.get("slurm_job_id"):
            self.slurm.cancel(str(record["slurm_job_id"]))


LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher, "slurm": SlurmLauncher}


def make_launcher(kind: str, defaults: Resources | None = None) -> Launcher:
    if kind not in LAUNCHERS:
        raise ConfigError(f"launcher must be one of {sorted(LAUNCHERS)}, got {kind!r}")
    return LAUNCHERS[kind](defaults)
