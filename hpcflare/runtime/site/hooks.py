"""What a strategy may change on the site side of a job, as one object (default: nothing).

Most strategies only run on the server. A peer-to-peer one (swarm learning) also needs each site to host
a peer, pull the model from another site and push results to a site instead of the server; it supplies
a :class:`SiteHooks` subclass, registered under the strategy's name in hpcflare.plugins.SITE_SIDES.
The site's connection, model sources and result sender call these hooks and never ask which strategy runs.
"""

from __future__ import annotations

from typing import Any

from hpcflare.transport.api import Task, UploadHeader


class SiteHooks:
    """No-op hooks: the site talks only to its parent (server or relay)."""

    def registration_fields(self) -> dict[str, Any]:
        """Extra fields for the site's Register request (swarm: the peer host's address)."""
        return {}

    def on_registered(self, reply: dict[str, Any]) -> None:
        """The parent's Register reply (swarm: the job's peer secret)."""

    def on_task(self, task: Task) -> None:
        """A task arrived; hooks may point it at another model (swarm: the previous aggregator's)."""

    def fetch(self, task: Task) -> dict[str, Any] | None:
        """The task's model from somewhere other than the parent, or None to use the usual sources."""
        return None

    def opened(self, task: Task, params: dict[str, Any]) -> None:
        """The task's model was fetched (swarm: this round's aggregator opens its peer round)."""

    def deliver(self, task: Task, header: UploadHeader, params: dict[str, Any]) -> bool:
        """Send a result somewhere other than the parent; True when it was handled here."""
        return False

    def close(self) -> None:
        """The site leaves the job."""
