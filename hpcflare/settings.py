"""Every deadline and limit in one place: named, documented, loaded from a configs/ profile.

Profiles live in ``configs/<name>.yaml`` (dev, production, hpc-large); a job may override any key
under ``settings:`` in its job.yaml. Unknown keys are an error, so a typo never silently keeps a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hpcflare.errors import ConfigError

CONFIGS_DIR = Path(
    os.environ.get("HPCFLARE_CONFIGS") or (Path(__file__).parent / "_data" / "configs").resolve()
)
"""The settings profiles: configs/ of a source checkout, shipped inside the package (hpcflare/_data) in a wheel."""


REGISTRATION_BASE_S = 10.0
REGISTRATION_S_PER_CLIENT = 0.01
"""Registration budget a job needs: start-up plus, per client, ~3x what 10,000 virtual clients took on 4 emulated
nodes sharing 2 cores (~3 ms each)."""
MAX_HEARTBEATS_PER_S = 500
"""Heartbeats per second one server takes without their handling crowding out rounds (gRPC Python, one core)."""


MAX_DEADLINE_S = 30 * 86400.0
"""The longest any deadline or interval may be: 30 days, beyond any Slurm job's time limit (1e300 s is a typo)."""

MAXIMA: dict[str, float] = {
    "min_link_mb_s": 1e6,
    "chunk_size": 64 << 20,
    "max_frame_bytes": (1 << 31) - 1,  # gRPC's largest message
    "max_model_bytes": 1 << 42,
    "model_file_bytes": 1 << 62,
    "max_concurrent_uploads": 1024,
    "upload_buffer_bytes": 64 << 30,
    "max_concurrent_downloads": 4096,
    "spool_tensor_bytes": 1 << 42,
    "max_anonymous_streams": 4096,
    "max_calls_per_site": 4096,
    "server_threads": 4096,
    "tracking_max_records_per_round": 10_000_000,
    "tracking_max_bytes_per_round": 1 << 40,
    "tracking_max_job_bytes": 1 << 44,
    "max_requeues": 10_000,
    "federation_max_app_bytes": 1 << 40,
}
"""Upper bound of every setting that is not a deadline (deadlines: MAX_DEADLINE_S); a larger value is refused."""
MAY_BE_ZERO = {"max_requeues"}
"""Counts where 0 means "never" (every other number must be > 0)."""


def _checked(key: str, kind: Any, value: Any) -> Any:
    """One setting's value, typed as its field (``kind``: the field's type, bool, int or float, or its name), or
    a ConfigError naming it."""
    if kind in ("bool", bool):
        if not isinstance(value, bool):
            raise ConfigError(f"settings.{key} must be true or false, got {value!r}")
        return value
    integral = kind in ("int", int)
    # a string, bool, NaN or infinity where a number belongs would silently disable a deadline or limit
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"settings.{key} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and key not in MAY_BE_ZERO):
        least = ">= 0" if key in MAY_BE_ZERO else "> 0"
        raise ConfigError(f"settings.{key} must be {least} and finite, got {value!r}")
    if integral and value != int(value):
        raise ConfigError(f"settings.{key} must be a whole number, got {value!r}")
    ceiling = upper_bound(key)
    if value > ceiling:
        raise ConfigError(f"settings.{key} must be at most {ceiling:g}, got {value!r}")
    return int(value) if integral else float(value)


@dataclasses.dataclass(frozen=True)
class Settings:
    # --- deadlines (seconds) ---
    registration_timeout: float = 60.0
    """Server waits this long for sites to register, then goes on with min_clients or fails the job (a site whose
    client rank is alive but still starting, its start-up beacon changing, gets startup_timeout)."""
    startup_timeout: float = 900.0
    """Longest a live client rank may take from the server's start to register its sites (imports of torch or
    Lightning from a shared filesystem on a loaded node); registration_timeout bounds only silence."""
    rendezvous_timeout: float = 60.0
    """A client waits this long for the server's address to appear (rendezvous file / MPI)."""
    round_timeout: float = 600.0
    """A round closes at this deadline with whatever results arrived (>= min_clients) or fails."""
    task_poll_timeout: float = 10.0
    """Long-poll length of one GetTask call; the client re-polls until the job ends."""
    rpc_timeout: float = 30.0
    """Deadline of one small unary RPC (register, heartbeat, task poll overhead)."""
    stream_timeout: float = 600.0
    """Deadline of one whole model download/upload stream."""
    min_link_mb_s: float = 50.0
    """The slowest link (MB/s) a model transfer must be allowed: a stream's deadline is max(stream_timeout, bytes /
    min_link_mb_s); the server warns when round_timeout cannot fit the model down and up at this rate."""
    stream_idle_timeout: float = 60.0
    """A stream that makes no progress for this long is cancelled."""
    auth_timeout: float = 10.0
    """A new upload stream must send its header within this long, or it is dropped (it would hold a thread)."""
    heartbeat_interval: float = 2.0
    """Clients send a heartbeat this often."""
    heartbeat_timeout: float = 30.0
    """A registered client not heard from for this long is declared dead (the round stops waiting for it)."""
    server_lost_timeout: float = 60.0
    """A client that cannot reach its parent for this long gives up (SERVER_LOST); a silent relay or client rank,
    with the sites it speaks for, is declared dead only after as long (a stopped or swapping host is no death)."""
    end_grace: float = 10.0
    """After the last round, the server waits this long for clients to collect the 'end' task."""
    upload_slot_timeout: float = 300.0
    """An upload waits this long for one of max_concurrent_uploads slots on the server."""
    # --- sizes ---
    chunk_size: int = 1 << 20
    """Bytes of tensor payload per streamed frame."""
    max_frame_bytes: int = (1 << 20) + (64 << 10)
    """Largest frame either side accepts (chunk + header); larger frames are refused by gRPC."""
    max_model_bytes: int = 8 << 30
    """Largest whole model (sum of tensors) a download or upload may carry."""
    shared_memory: bool = True
    """Ranks on the same host (same boot, PID namespace and user) hand models and results to each other as sealed
    memory files that the receiver maps, instead of streaming them over loopback gRPC; anything that stops it
    (another host, /proc hidden) falls back to streaming. A result is then copied once into such a file, which the
    parent reads a block at a time while it checks and folds it. false: always stream."""
    model_file_bytes: int = 256 << 20
    """A global model at least this large is held in a node-local spool file (HPCFLARE_SPOOL_DIR, else
    SLURM_TMPDIR, else the system tmp) instead of the server's memory: served from the page cache with pread,
    mapped read-only by same-host ranks, so the server's RSS holds the round's running sum (~1x the model)
    rather than also the model it serves (~2x). Smaller models stay in a sealed memory file (no disk writes)."""
    max_concurrent_uploads: int = 2
    """Uploads checked and folded at once on the server. Large tensors of an upload wait in a node-local spool
    file (or the sender's memory file) and are read a block at a time, so each costs a few MB of server memory."""
    upload_buffer_bytes: int = 256 << 20
    """Upload bytes the server's gRPC layer may hold over all its direct children's streams before the server reads
    them (HTTP/2 flow-control windows): each stream's window is this over the children, between 64 KiB and 8 MiB.
    A wide window lets one upload run at ~1.2 GB/s on loopback (gRPC's default 64 KiB: ~0.9); a stream waiting for
    an upload slot holds up to its window (the server's RSS grows by ~1.5x the window per waiting stream)."""
    max_concurrent_downloads: int = 16
    """Model streams served at once; more wait (up to upload_slot_timeout). Bounds transport buffers."""
    spool_tensor_bytes: int = 4 << 20
    """Upload tensors at least this large wait for aggregation in a node-local temp file, not in memory."""
    max_anonymous_streams: int = 8
    """Upload streams one peer address may hold open without credentials (a site's streams carry its name and
    token, so they never count); more are refused as busy, and all anonymous streams together may hold at most a
    quarter of server_threads, so idle connections cannot starve control calls or honest transfers."""
    max_calls_per_site: int = 16
    """Unary calls one site's name may have in progress at once (more: refused as busy; credential-less calls
    never wait)."""
    server_threads: int = 64
    """gRPC worker threads on the server (each blocked long-poll holds one)."""
    tracking_max_records_per_round: int = 100_000
    """Tracking records (flare.log, SummaryWriter, ...) one site sends per round; more are dropped with a warning."""
    tracking_max_bytes_per_round: int = 64 << 20
    """Bytes of tracking records (as sent) a server or relay takes from one site per round, whatever its client
    library does; beyond it (or tracking_max_records_per_round records) the rest of the round's are dropped, with
    one warning per site and round."""
    tracking_max_job_bytes: int = 4 << 30
    """Bytes of tracking records a server or relay takes over the whole job (its disk budget for them)."""
    tracking_flush_interval: float = 5.0
    """A site sends its buffered tracking records at least this often (and always before its result)."""
    max_requeues: int = 100
    """Requeues of a Slurm job at its time limit or a preemption, each resuming from the last checkpoint (sbatch's
    trap, SlurmEnv's max_num_timeout); 0: none, the time limit ends the job (TIME_LIMIT)."""
    site_join_timeout: float = 600.0
    """A standing server waits this long for a job's sites to accept it, then runs with those (>= min_clients)."""
    federation_poll_wait: float = 20.0
    """Longest a site agent's or an admin's long-poll is held by the standing server when nothing changed."""
    federation_retry_max: float = 60.0
    """Longest back-off between a site agent's retries after losing the standing server (it retries for ever)."""
    federation_check_interval: float = 2.0
    """How often a standing server checks its jobs' server ranks, and a site agent its client ranks."""
    federation_max_app_bytes: int = 1 << 30
    """Largest job (app files plus initial model) an admin may submit to a standing server, in bytes."""
    metrics_interval: float = 15.0
    """Ranks sample their process and node this often (sent in heartbeats); the server refreshes its metrics
    exports and the dashboard's series (metrics/series.jsonl) as often."""

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its docstring, parsed from this file (shown by `hpcflare settings`)."""
        import ast
        import inspect

        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        docs: dict[str, str] = {}
        for prev, node in zip(body, body[1:]):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
            ):
                docs[prev.target.id] = str(node.value.value)  # type: ignore[union-attr]
        return docs

    def replace(self, **overrides: Any) -> Settings:
        return Settings.from_mapping({**dataclasses.asdict(self), **overrides})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown settings key(s) {unknown}; valid keys: {sorted(fields)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _checked(key, fields[key].type, value)
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def load(
        cls, profile: str | os.PathLike[str] = "dev", overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Load a profile by name (configs/<name>.yaml) or path, then apply overrides."""
        path = Path(profile)
        if not path.suffix:
            path = CONFIGS_DIR / f"{profile}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"settings profile {str(profile)!r} not found (looked for {path}); "
                f"use one of {sorted(p.stem for p in CONFIGS_DIR.glob('*.yaml'))} or a path to a YAML file"
            )
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        return cls.from_mapping({**data, **(overrides or {})})

    def validate(self) -> None:
        """Reject combinations that can only end in a spurious timeout."""
        problems = []
        if self.max_frame_bytes < self.chunk_size + 1024:
            problems.append(
                f"max_frame_bytes ({self.max_frame_bytes}) must exceed chunk_size ({self.chunk_size}) by >= 1024 for headers"
            )
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            problems.append(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be > 2 x heartbeat_interval ({self.heartbeat_interval})"
            )
        if self.task_poll_timeout >= self.server_lost_timeout:
            problems.append(
                f"task_poll_timeout ({self.task_poll_timeout}) must be < server_lost_timeout ({self.server_lost_timeout})"
            )
        if self.max_anonymous_streams > self.server_threads // 4:
            problems.append(
                f"max_anonymous_streams ({self.max_anonymous_streams}) must be <= server_threads / 4 "
                f"({self.server_threads // 4}): anonymous streams would take the threads control calls need"
            )
        if self.stream_idle_timeout > self.stream_timeout:
            problems.append(
                f"stream_idle_timeout ({self.stream_idle_timeout}) must be <= stream_timeout ({self.stream_timeout})"
            )
        if problems:
            raise ConfigError("inconsistent settings: " + "; ".join(problems))

    def warnings(self) -> list[str]:
        """Legal but risky combinations, logged at job start with the settings they involve."""
        found = []
        if self.round_timeout < self.stream_timeout:
            found.append(
                f"round_timeout ({self.round_timeout:g}s) < stream_timeout ({self.stream_timeout:g}s): a slow "
                "model transfer can outlast its round; its result would be discarded as late"
            )
        if self.registration_timeout < self.rendezvous_timeout:
            found.append(
                f"registration_timeout ({self.registration_timeout:g}s) < rendezvous_timeout "
                f"({self.rendezvous_timeout:g}s): clients may still be looking for the server when it gives up"
            )
        if self.server_lost_timeout < self.heartbeat_timeout:
            found.append(
                f"server_lost_timeout ({self.server_lost_timeout:g}s) < heartbeat_timeout "
                f"({self.heartbeat_timeout:g}s): clients give up on a busy server before it gives up on them"
            )
        return found

    def stream_deadline(self, nbytes: int) -> float:
        """Seconds one whole stream of ``nbytes`` may take: stream_timeout, or longer for a model that needs it
        at min_link_mb_s."""
        return max(self.stream_timeout, nbytes / (self.min_link_mb_s * 1e6))

    def fit_warnings(self, clients: int, direct: int, model_bytes: int = 0) -> list[str]:
        """Where this profile cannot fit a job of ``clients`` sites, ``direct`` of whose links (relays, client
        ranks or sites) end at the server, and a model of ``model_bytes``; the formulas are documented in the
        README (Scale and resilience)."""
        found = []
        transfer = 2 * model_bytes / (self.min_link_mb_s * 1e6)
        if transfer > self.round_timeout:
            found.append(
                f"round_timeout ({self.round_timeout:g}s) cannot fit a {model_bytes / 1e9:.2f} GB model down and "
                f"up at min_link_mb_s={self.min_link_mb_s:g} MB/s ({transfer:.0f}s): raise round_timeout"
            )
        needed = REGISTRATION_BASE_S + REGISTRATION_S_PER_CLIENT * clients
        if self.registration_timeout < needed:
            found.append(
                f"registration_timeout ({self.registration_timeout:g}s) is short for {clients} clients: allow "
                f"~{needed:g}s ({REGISTRATION_BASE_S:g}s + {REGISTRATION_S_PER_CLIENT:g}s per client), or use "
                "settings_profile='hpc-large'"
            )
        rate = direct / self.heartbeat_interval
        if rate > MAX_HEARTBEATS_PER_S:
            found.append(
                f"{direct} links heartbeat the server every heartbeat_interval={self.heartbeat_interval:g}s "
                f"({rate:.0f}/s > {MAX_HEARTBEATS_PER_S}): raise heartbeat_interval, add relays, or run the "
                "sites as virtual clients (clients_per_rank)"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def upper_bound(key: str) -> float:
    """The largest value settings.``key`` may take: MAXIMA's, else (a deadline or interval) MAX_DEADLINE_S."""
    return MAXIMA.get(key, MAX_DEADLINE_S)
