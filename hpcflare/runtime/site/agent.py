"""A site in the job: one object that the Client API (and a relay, for its own upstream link) drives.

It only composes the three concerns, each in its own module:

- :mod:`hpcflare.runtime.site.connection`: rendezvous, registration, heartbeats, retries, relay failover;
- :mod:`hpcflare.runtime.site.tasks`: the next task and the task's model (site hooks, staging, gRPC);
- :mod:`hpcflare.runtime.site.result_sender`: filters, staging or streaming of the result, retries.

A strategy that changes the site side (swarm) does so through one :class:`SiteHooks` object, made by the
factory the role that builds the agent hands in (``site_sides``, by strategy name: the plugin registry
:data:`hpcflare.plugins.SITE_SIDES`), never through checks scattered over these modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hpcflare.job import JobConfig, JobDir
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.site.connection import Connection
from hpcflare.runtime.site.hooks import SiteHooks
from hpcflare.runtime.site.result_sender import ResultSender
from hpcflare.runtime.site.tasks import TaskFetcher
from hpcflare.runtime.site.track_records import TrackBuffer
from hpcflare.security.jobs import load_kit
from hpcflare.settings import Settings
from hpcflare.transport.api import ServerHandler, Task

SiteSides = Mapping[str, Callable[["ClientAgent"], SiteHooks]]
"""Strategies with a site side, by strategy name; every other strategy gets the no-op SiteHooks."""


class ClientAgent:
    def __init__(
        self,
        job_dir: JobDir,
        site: str,
        log: RankLogger,
        address: str | None = None,
        heartbeat_extra: Callable[[], dict[str, Any]] | None = None,
        parent: ServerHandler | None = None,
        in_process: bool = False,
        site_sides: SiteSides | None = None,
    ) -> None:
        self.job_dir, self.site, self.log = job_dir, site, log
        self.site_sides: SiteSides = site_sides or {}
        self.config: JobConfig = job_dir.load_config()
        self.kit = load_kit(job_dir, self.config, site, required=parent is None)
        for problem in self.kit.self_check() if self.kit else []:
            log.warning(
                "certificate_problem", f"{problem}; the server will refuse this site", problem=problem
            )
        self.connection = Connection(
            job_dir,
            self.config,
            self.config.load_settings(),
            site,
            log,
            self.kit,
            SiteHooks(),
            address,
            heartbeat_extra,
            parent,
            in_process,
        )
        self.tasks = TaskFetcher(job_dir, self.connection, log)
        self.tracks = TrackBuffer(self.connection, log)
        self.results = ResultSender(job_dir, self.connection, log, self.tracks)

    # the connection's state, read by the Client API, launchers and relays
    hooks = property(lambda self: self.connection.hooks)
    settings = property(lambda self: self.connection.settings)
    token = property(lambda self: self.connection.token)
    transport = property(lambda self: self.connection.transport)
    started = property(lambda self: self.connection.started)
    ended = property(lambda self: self.tasks.ended)
    end_reason = property(lambda self: self.tasks.end_reason)

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.connection.settings = value

    @property
    def on_stuck(self) -> Callable[[str, bool], None] | None:
        return self.connection.on_stuck

    @on_stuck.setter
    def on_stuck(self, value: Callable[[str, bool], None] | None) -> None:
        self.connection.on_stuck = value

    def start(self) -> ClientAgent:
        factory = self.site_sides.get(self.config.strategy)
        if factory is not None and self.site in self.config.clients and type(self.hooks) is SiteHooks:
            self.connection.hooks = factory(self)  # e.g. this site's swarm peer host
        self.connection.start()
        return self

    def call(self, method: str, request: dict, timeout: float) -> dict:
        return self.connection.call(method, request, timeout)

    def next_task(self, timeout: float | None = None, last_task_id: str | None = None) -> Task | None:
        return self.tasks.next_task(timeout, last_task_id)

    def fetch(self, task: Task) -> dict[str, Any]:
        return self.results.received(task, self.tasks.fetch(task))

    def close(self, status: str = "done", reason: str = "") -> None:
        self.tracks.flush(final=self.ended or status != "done")
        self.hooks.close()
        self.connection.close(status, reason)
