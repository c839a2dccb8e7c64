"""Which startup kit a rank uses, and the per-job provisioning that makes TLS the default on Slurm.

``job.yaml`` says ``tls: auto|on|off`` and ``kits_dir`` (relative to the job dir, or absolute).
``prepare_job`` runs where a job is submitted (Env.deploy, ``hpcflare job submit``, the sbatch batch step):
it turns ``auto`` into ``on`` for Slurm/MPI and ``off`` for local/sim runs, and, when TLS is on and no
kits exist yet, provisions a throw-away CA plus kits for this job's server, relays and sites into the job
directory (keys 0600, the directory 0700). Multi-site projects provision once with ``hpcflare provision``
and point ``kits_dir`` at the kits, or give each site its own kit with ``HPCFLARE_KIT=/path/to/kit``.

    python -m hpcflare.security.jobs JOB_DIR --default on     # what the sbatch template runs
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from hpcflare.errors import ConfigError
from hpcflare.fileio import publish_dir
from hpcflare.job import JobConfig, JobDir
from hpcflare.privacy import check_privacy, ensure_job_keys
from hpcflare.privacy.api import HE_PUBLIC_FILE
from hpcflare.security.tls import StartupKit

KITS_LOCK_TIMEOUT = 60.0
"""Seconds a job submission waits for another one (server and clients jobs of one job dir) provisioning kits."""

KIT_ENV = "HPCFLARE_KIT"
"""Path of this rank's own startup kit; overrides ``kits_dir/<name>`` (a site that keeps its kit locally)."""


def kits_root(job_dir: JobDir, config: JobConfig) -> Path:
    path = Path(config.kits_dir)
    return path if path.is_absolute() else job_dir.root / path


def tls_enabled(job_dir: JobDir, config: JobConfig) -> bool:
    if config.tls == "auto":  # never prepared: on exactly when kits are there
        return kits_root(job_dir, config).is_dir() or bool(os.environ.get(KIT_ENV))
    return config.tls == "on"


def load_kit(
    job_dir: JobDir, config: JobConfig, name: str, role: str = "", required: bool = True
) -> StartupKit | None:
    """This rank's kit when the job runs with TLS; None for a plain-text job. ``required=False``: a site
    that reaches its client rank in-process uses its kit only for the kit's script policy, if it has one."""
    if not tls_enabled(job_dir, config):
        return None
    own = os.environ.get(KIT_ENV)  # the process's own kit: a hand-written launch's rank
    rank = config.hosting_rank(name)
    path = Path(own) if own and rank is None else kits_root(job_dir, config) / name
    names = {name}
    if rank is not None and not path.exists():  # a virtual client without a kit of its own
        if not required:
            return None  # it reaches its client rank in-process
        path, names = (
            (Path(own) if own else kits_root(job_dir, config) / rank),
            {name, rank},
        )  # shows its rank's
    if not path.exists() and name in config.rank_hosts():
        raise ConfigError(
            f"{name} hosts sites as virtual clients and connects in their stead, so it needs a startup "
            f"kit of its own at {path}: `hpcflare provision PROJECT_DIR --add {name}` (role client), or "
            "run with clients_per_rank=1"
        )
    kit = StartupKit.load(path)
    names |= {s for n in list(names) if (s := config.site_relay_of(n))}  # a site's own ranks show its kit
    if kit.name not in names and not (role == "server" and kit.role == "server"):
        raise ConfigError(f"startup kit {path} belongs to {kit.name!r}, but this rank is {name!r}")
    return kit


def prepare_job(job_dir: JobDir, secure_default: bool) -> JobConfig:
    """Resolve ``tls: auto`` and provision the job's kits if TLS is on and none exist."""
    config = job_dir.load_config()
    job_dir.ensure_secret()
    if config.tls == "auto":
        config.tls = "on" if secure_default else "off"
        job_dir.save_config(config)
    root = kits_root(job_dir, config)
    if (
        config.tls == "on" and not root.is_dir()
    ):  # every rank comes here: only a missing kit set takes the lock
        try:
            with FileLock(
                str(job_dir.root / ".kits.lock"), timeout=KITS_LOCK_TIMEOUT
            ):  # server/clients jobs race
                if not root.exists():
                    _provision_job(job_dir, config, root)
        except Timeout:
            raise ConfigError(
                f"{job_dir.root / '.kits.lock'} held for {KITS_LOCK_TIMEOUT:g}s by another submission; "
                "remove it if no submission of this job is running"
            ) from None
    if config.tls == "on" and not root.is_dir():
        raise ConfigError(f"kits_dir {root} is not a directory")
    if config.tls == "on" and (root / "ca" / JOB_MADE).is_file() and _missing_kits(config, root):
        with FileLock(str(job_dir.root / ".kits.lock"), timeout=KITS_LOCK_TIMEOUT):
            _add_missing_kits(config, root)
    spec = check_privacy(config.privacy, config.strategy, config.filters)
    if (
        spec is not None
        and spec.type == "he"
        and not (job_dir.root / "he_keys").exists()
        and not (root / "server" / HE_PUBLIC_FILE).exists()
    ):  # provisioned into the kits: no job-made keys
        with FileLock(str(job_dir.root / ".kits.lock"), timeout=KITS_LOCK_TIMEOUT):
            ensure_job_keys(job_dir.root, config.clients, spec)
    return config


def _provision_job(job_dir: JobDir, config: JobConfig, root: Path) -> None:
    from hpcflare.security.provision import job_project, provision

    project = job_project(config.job_id, _connecting(config), config.relay_names())
    tmp = root.parent / f".{root.name}.provisioning"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted earlier attempt
    made = provision(project, tmp)
    (made / "ca" / JOB_MADE).write_text(
        "this job's own CA: hpcflare issues kits for ranks a resubmission adds\n"
    )
    publish_dir(made, root)  # appears whole or not at all for ranks that look for it
    os.rmdir(tmp)


JOB_MADE = "job-made"
"""Marks a kit set the job provisioned for itself: only there are kits for new rank names added (never to a
project a user provisioned)."""


def _connecting(config: JobConfig) -> list[str]:
    """Who connects: client ranks, or the sites themselves when each has a rank (sites behind a client rank
    reach it in-process, so only the rank needs a kit)."""
    return list(config.rank_hosts()) or list(config.clients)


def _missing_kits(config: JobConfig, root: Path) -> list[str]:
    return [name for name in [*_connecting(config), *config.relay_names()] if not (root / name).is_dir()]


def _add_missing_kits(config: JobConfig, root: Path) -> None:
    """Kits for ranks a job's own CA has not issued yet: the job was resubmitted with another layout (e.g. its
    sites now packed into client ranks), so the new rank names join the same throw-away project."""
    from hpcflare.security.provision import Participant, add_participant

    relays = set(config.relay_names())
    for name in _missing_kits(config, root):
        add_participant(root, Participant(name, "relay" if name in relays else "client"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcflare.security.jobs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("job_dir")
    parser.add_argument("--default", choices=("on", "off"), default="on", help="what tls: auto becomes")
    args = parser.parse_args(argv)
    config = prepare_job(JobDir(args.job_dir), args.default == "on")
    print(
        f"tls: {config.tls}"
        + (f" (kits in {kits_root(JobDir(args.job_dir), config)})" if config.tls == "on" else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
