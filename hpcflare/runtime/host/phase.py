"""Where a round host stands (its children see it in heartbeat replies)."""

from __future__ import annotations

from hpcflare.enums import NamedEnum


class HostPhase(NamedEnum):
    """Where a round host (server, relay, swarm peer) stands; children see it in heartbeat replies."""

    REGISTRATION = "registration"
    RUNNING = "running"
    ABORTING = "aborting"
    ENDED = "ended"
