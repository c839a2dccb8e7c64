"""Typed error family: every failure a user can hit is one of these, with a message that says what to do."""

from __future__ import annotations


class HpcflareError(Exception):
    """Base of every hpcflare error."""


class ConfigError(HpcflareError):
    """A job config, profile or recipe argument is missing or inconsistent."""


class TransportError(HpcflareError):
    """A message could not be moved between ranks."""


class PeerGoneError(TransportError):
    """The other side of a connection disappeared (process died, node lost)."""


class CollectiveLostError(PeerGoneError):
    """A collective this site takes part in (XGBoost's histogram allreduce) lost one of its members: the site
    stops with it; the member lost first is the job's cause, not this site."""


class RendezvousTimeoutError(PeerGoneError):
    """A rank's address was not published (rendezvous file / MPI broadcast) within settings.rendezvous_timeout."""


class StreamTimeoutError(TransportError):
    """A stream made no progress within its deadline."""


class ServerBusyError(StreamTimeoutError):
    """The server refused a call before handling it (at its concurrent-call limit); safe to retry with backoff."""


class FrameTooLargeError(TransportError):
    """A frame or a whole message exceeded a configured size limit."""


class MalformedMessageError(TransportError):
    """Bytes on the wire could not be decoded into a valid frame/metadata/tensor."""


class UpdateRejectedError(HpcflareError):
    """The server refused a client's update (wrong shape/dtype, NaN/Inf, unknown client, stale round)."""


class RegistrationTimeoutError(HpcflareError):
    """Too few clients registered before the registration deadline."""


class RoundFailedError(HpcflareError):
    """A round closed with fewer results than min_clients."""


class JobAbortedError(HpcflareError):
    """The job was aborted by the user or by the server."""


class NodeLostError(HpcflareError):
    """The scheduler ended the job because it lost one of the job's nodes (Slurm: NODE_FAIL)."""


class TimeLimitError(HpcflareError):
    """The scheduler ended the job at its time limit, with no requeue left."""


class OutOfMemoryError(HpcflareError):
    """The scheduler killed the job (or a step of it) for using more memory than it asked for."""


class UnknownClientError(UpdateRejectedError):
    """A message came from a site that is not registered for this job (or with a wrong token)."""


class RegistrationRefusedError(UnknownClientError):
    """The server refused a Register: the name is not one of the job's sites, or the caller could not prove
    that it is (no certificate of that name, no HMAC of the job's secret)."""


class PermissionDeniedError(HpcflareError):
    """An admin's role does not allow the action (submit, abort, download) on this job."""


class StaleTaskError(UpdateRejectedError):
    """A result or download referred to a task/round that is no longer open; it is discarded, never mixed in."""


class SiteEndedError(HpcflareError):
    """The job goes on without this site (or ended) while its script was inside a round: a normal end."""


class JobFailedError(HpcflareError):
    """A job ended in a failed or aborted state; the message carries the server's reason."""


class CertificateError(TransportError):
    """A TLS certificate was refused (expired, from another project's CA, a name not in the project)."""


class PolicyRefusedError(HpcflareError):
    """A site's policy (its startup kit) refuses what the job asks it to do, e.g. run an unlisted script."""
