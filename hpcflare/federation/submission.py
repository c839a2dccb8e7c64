"""What an admin submits, checked before it is stored: a job folder (job.yaml, app/, the initial model) and
an optional ``resource_spec`` (per site, or "*" for every site: gpus, time_minutes, partition, account,
client_ranks), which each site checks against its own limits.

The job runs across institutions, so the store fixes what only holds inside one allocation: mutual TLS on
(sites prove themselves by certificate), one client rank per site, no shared staging directory.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError
from hpcflare.job import SITE_NAME, JobConfig, JobDir
from hpcflare.security.tls import StartupKit

RESOURCE_KEYS = {"gpus", "time_minutes", "partition", "account", "client_ranks"}


def submitted_files(job_dir: Path) -> list[str]:
    """What a Session sends of an exported job folder: job.yaml, meta.json, app/ and the initial model."""
    config = JobDir(job_dir).load_config()
    names = ["job.yaml"] + (["meta.json"] if (job_dir / "meta.json").is_file() else [])
    names += sorted(
        p.relative_to(job_dir).as_posix()
        for p in (job_dir / "app").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    initial = Path(config.initial_model)
    if not initial.is_absolute() and (job_dir / initial).is_file():
        names.append(initial.as_posix())
    return names


def accept_name(name: str) -> bool:
    return name in ("job.yaml", "meta.json") or name.startswith(("app/", "models/"))


def check_resource_spec(spec: Any, sites: list[str]) -> dict[str, dict[str, Any]]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(
            "resource_spec must map a site (or '*') to {gpus, time_minutes, partition, account}"
        )
    out: dict[str, dict[str, Any]] = {}
    for site, wants in spec.items():
        if site != "*" and site not in sites:
            raise ConfigError(f"resource_spec names {site!r}, which is not one of the job's sites {sites}")
        if not isinstance(wants, dict) or set(wants) - RESOURCE_KEYS:
            raise ConfigError(f"resource_spec[{site!r}] may only set {sorted(RESOURCE_KEYS)}")
        for key in ("gpus", "time_minutes", "client_ranks"):
            value = wants.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"resource_spec[{site!r}].{key} must be a whole number >= 0")
        for key in ("partition", "account"):
            value = wants.get(key)
            if value is not None and (not isinstance(value, str) or not SITE_NAME.match(value)):
                raise ConfigError(f"resource_spec[{site!r}].{key} must be a plain name")
        out[str(site)] = dict(wants)
    return out


def resource_spec_from_meta(job_dir: Path) -> Any:
    """NVFlare's meta.json ``resource_spec`` ({site: {num_of_gpus: N}}), as ours."""
    try:
        meta = json.loads((job_dir / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    spec = meta.get("resource_spec") if isinstance(meta, dict) else None
    if not isinstance(spec, dict):
        return None
    return {
        site: {
            ("gpus" if k == "num_of_gpus" else k): v for k, v in wants.items() if k != "mem_per_gpu_in_GiB"
        }
        for site, wants in spec.items()
        if isinstance(wants, dict)
    }


def prepare(incoming: Path, kit: StartupKit, job_id: str) -> JobConfig:
    """Check a received job folder and fix it for a run across institutions; returns its config."""
    job_dir = JobDir(incoming)
    config = job_dir.load_config()
    unknown = [s for s in config.participants() if kit.participants.get(s) != "client"]
    if unknown:
        raise ConfigError(
            f"the job names site(s) {unknown[:10]} that are not client participants of project {kit.project!r} "
            f"(its sites: {sorted(n for n, r in kit.participants.items() if r == 'client')[:20]}); provision them "
            "with `hpcflare provision PROJECT_DIR --add NAME` or fix the job's clients"
        )
    if config.relays:
        raise ConfigError(
            "a job submitted to a standing server runs without relays for now (relays: 0): each site's agent "
            "runs one client rank that connects to the job's server"
        )
    script = (incoming / config.train_script).resolve()
    if not script.is_relative_to(job_dir.app_dir.resolve()) or not script.is_file():
        raise ConfigError(f"train_script {config.train_script!r} must be a file under the job's app/ folder")
    initial = incoming / config.initial_model
    if not initial.is_file():
        raise ConfigError(f"the job's initial model {config.initial_model} was not submitted")
    config = dataclasses.replace(
        config, job_id=job_id, tls="on", staging=False, clients_per_rank=1, kits_dir="kits"
    )
    for d in (job_dir.models_dir, job_dir.log_dir, job_dir.rendezvous_dir):
        d.mkdir(parents=True, exist_ok=True)
    job_dir.save_config(config)
    shutil.rmtree(incoming / "kits", ignore_errors=True)  # never a submitter's keys
    return config
