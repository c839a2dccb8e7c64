"""What the standing server's services need of it (the server implements this; the services never import it)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from hpcflare.federation.audit import AuditLog
from hpcflare.federation.launchers import Launcher
from hpcflare.federation.store import FedJob, JobStore
from hpcflare.rank_logger import RankLogger
from hpcflare.security.tls import StartupKit
from hpcflare.settings import Settings


class FederationHost(Protocol):
    kit: StartupKit
    settings: Settings
    store: JobStore
    audit: AuditLog
    log: RankLogger
    launcher: Launcher
    cv: threading.Condition
    """Notified on every change of a job; long-polls wait on it."""
    port: int
    sites_seen: dict[str, dict[str, Any]]

    def changed(self, job: FedJob) -> None:
        """Persist ``job`` and wake the long-polls."""

    def abort(self, job: FedJob, who: str) -> None:
        """End ``job`` now (its server rank is stopped), recording who did it."""

    def note_site(self, site: str, header: dict[str, Any]) -> None:
        """Remember that ``site``'s agent called (version, launcher, host)."""
