"""A site's side of a round's start: wait for the next task (long poll), then get the task's model.

Models come from the first source that has them: the strategy's site hooks (swarm: a peer site), the
shared-filesystem staging directory (memory-mapped, checksum-verified), else a gRPC pull from the parent.
"""

from __future__ import annotations

import time
from typing import Any

from hpcflare import errors
from hpcflare.job import JobConfig, JobDir
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.cluster import staging
from hpcflare.runtime.site.connection import Connection
from hpcflare.transport.api import Rpc, Task
from hpcflare.transport.codec import decode_tensor
from hpcflare.transport.model_files import map_tensors

END, WAIT = "end", "wait"
"""GetTask replies that are not tasks: the job is over / nothing yet, ask again."""


class StagingSource:
    """The round's model memory-mapped from the staging directory, when this node sees it."""

    via = "staging"

    def __init__(self, job_dir: JobDir, config: JobConfig, log: RankLogger) -> None:
        self.root, self.framework, self.log = config.staging_root(job_dir.root), config.framework, log

    def fetch(self, task: Task) -> dict[str, Any] | None:
        if not task.staged:
            return None
        try:
            path = staging.verified(self.root, task.staged)
            if self.framework == "pytorch":
                import safetensors.torch  # torch only where the job's framework is pytorch

                params = dict(safetensors.torch.load_file(str(path)))
            else:
                params = map_tensors(path)
            if sorted(params) != sorted(s.name for s in task.manifest):
                raise errors.MalformedMessageError("staged model does not match the task's manifest")
            return params
        except (OSError, errors.HpcflareError) as exc:
            self.log.info(
                "staging_fallback",
                f"staged model not usable here ({exc}); falling back to gRPC streaming",
                round=task.round,
                reason=str(exc),
            )
            return None


class GrpcSource:
    """The round's model pulled from the parent over gRPC (resumable, retried through the connection), or
    handed over in-process by a virtual client's client rank."""

    def __init__(self, connection: Connection, framework: str) -> None:
        self.connection, self.framework = connection, framework
        self.via = "grpc" if connection.parent is None else "client rank"

    def fetch(self, task: Task) -> dict[str, Any]:
        def pull() -> dict[str, Any]:
            transport, token = self.connection.credentials()
            request = {"site": self.connection.site, "token": token, "ref": task.ref}
            params = {
                spec.name: decode_tensor(blob, spec, self.framework)
                for spec, blob in transport.download(request, task.manifest)
            }
            self.via = getattr(transport, "last_via", self.via)  # grpc or shared memory
            return params

        return self.connection.retry(Rpc.DOWNLOAD, pull)


class TaskFetcher:
    def __init__(self, job_dir: JobDir, connection: Connection, log: RankLogger) -> None:
        self.connection, self.log = connection, log
        config, settings = connection.config, connection.settings
        self.sources = [StagingSource(job_dir, config, log), GrpcSource(connection, config.framework)]
        self.ended = False
        self.end_reason = ""
        self.pending: Task | None = None
        """The last task handed to the script that has no result sent yet (None once sent)."""
        self.wait_limit = settings.registration_timeout + settings.round_timeout + settings.stream_timeout
        """Longest a site waits for its next task while the server is reachable (covers one whole round)."""

    def next_task(self, timeout: float | None = None, last_task_id: str | None = None) -> Task | None:
        """Block until the parent hands out a task; None when the job has ended or ``timeout`` passed."""
        if self.ended:
            return None
        limit = self.wait_limit if timeout is None else timeout
        deadline = time.monotonic() + limit
        poll = self.connection.settings.task_poll_timeout
        while True:
            remaining = deadline - time.monotonic()
            reply = self.connection.call(
                Rpc.GET_TASK,
                {"last_task_id": last_task_id, "timeout": max(0.0, min(poll, remaining))},
                self.connection.settings.rpc_timeout + poll,
            )
            kind = reply.get("task")
            if kind == END:
                self.ended, self.end_reason = True, str(reply.get("reason", ""))
                self.log.info("job_ended", f"server ended the job ({self.end_reason})")
                return None
            if kind != WAIT:
                task = Task.from_reply(reply)
                self.pending = task
                self.connection.hooks.on_task(task)
                self.log.info(
                    "task_received",
                    f"round {task.round}/{task.total_rounds}: task {task.name} received",
                    round=task.round,
                    task=task.name,
                    task_id=task.task_id,
                )
                return task
            if time.monotonic() >= deadline:
                if timeout is None:
                    raise errors.StreamTimeoutError(
                        f"no task from the server within {limit:g}s "
                        "(registration_timeout + round_timeout + stream_timeout)"
                    )
                return None

    def fetch(self, task: Task) -> dict[str, Any]:
        """The task's model from the first source that has it."""
        t0 = time.monotonic()
        params, via = self.connection.hooks.fetch(task), "swarm peer"
        for source in self.sources:
            if params is not None:
                break
            params, via = source.fetch(task), source.via
        assert params is not None  # the gRPC source always answers (or raises)
        self.connection.hooks.opened(task, params)
        nbytes = sum(s.nbytes for s in task.manifest)
        self.log.info(
            "model_received",
            f"round {task.round}: model received via {via} ({nbytes / 1e6:.2f} MB in "
            f"{time.monotonic() - t0:.2f}s)",
            round=task.round,
            bytes=nbytes,
            via=via,
            seconds=time.monotonic() - t0,
        )
        return params
