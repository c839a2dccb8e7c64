"""A site's say over the jobs it runs: which training scripts (by sha256), which resources, where its data is.

The script check is the kit's (``allowed_scripts`` hashed at provision time, ``allow_any_script``) widened by
site.yaml's own ``allowed_scripts`` hashes; a job's ``resource_spec`` must fit site.yaml's limits; and the
job's ``{data_root}`` placeholders become the site's own data location, which the admin never sees.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpcflare.errors import PolicyRefusedError
from hpcflare.federation.config import SiteConfig
from hpcflare.federation.launchers import Resources
from hpcflare.job import JobConfig, JobDir
from hpcflare.runtime.script_runner import script_path
from hpcflare.security.policy import script_digest
from hpcflare.security.tls import StartupKit

DATA_ROOT = "{data_root}"


class SitePolicy:
    def __init__(self, kit: StartupKit, config: SiteConfig) -> None:
        self.kit, self.config = kit, config

    def check(self, job_dir: JobDir, config: JobConfig, wants: dict[str, Any]) -> None:
        """Raise PolicyRefusedError (saying which rule and how to change it) unless the site runs this job."""
        self._script(job_dir, config)
        self._resources(wants)
        clients = len(config.client_groups.get(self.kit.name, [])) or 1
        if clients > self.config.max_clients:
            raise PolicyRefusedError(
                f"the job runs {clients} virtual clients at this site (site_clients), over this site's "
                f"max_clients={self.config.max_clients} (site.yaml)"
            )
        args = [*config.train_args, *config.site_train_args.get(self.kit.name, [])]
        if any(DATA_ROOT in a for a in args) and self.config.data_root is None:
            raise PolicyRefusedError(
                f"the job's train_args use {DATA_ROOT}, but this site's site.yaml sets no data_root"
            )

    def _script(self, job_dir: JobDir, config: JobConfig) -> None:
        digest = script_digest(script_path(job_dir, config.train_script))
        kit_list = [e for e in self.kit.policy.get("allowed_scripts") or [] if isinstance(e, dict)]
        allowed = {str(e.get("sha256")) for e in kit_list} | set(self.config.allowed_scripts)
        if not allowed and self.kit.policy.get("allow_any_script", True):
            return
        if digest in allowed:
            return
        raise PolicyRefusedError(
            f"{config.train_script} (sha256 {digest}) is not among this site's allowed scripts "
            f"({len(allowed)} listed in its kit and site.yaml); the site's admin may add its sha256 to site.yaml "
            "allowed_scripts"
        )

    def _resources(self, wants: dict[str, Any]) -> None:
        limits = self.config
        checks = [
            ("client_ranks", limits.max_client_ranks, "max_client_ranks"),
            ("gpus", limits.max_gpus, "max_gpus"),
            ("time_minutes", limits.max_wall_minutes, "max_wall_minutes"),
        ]
        for key, limit, name in checks:
            value = wants.get(key)
            if value is not None and limit is not None and value > limit:
                raise PolicyRefusedError(f"the job asks for {key}={value}, over this site's {name}={limit}")
        for key, allowed, name in (
            ("partition", limits.partitions, "partitions"),
            ("account", limits.accounts, "accounts"),
        ):
            value = wants.get(key)
            if value is not None and value not in (allowed or []):
                raise PolicyRefusedError(
                    f"the job asks for {key} {value!r}, which this site does not offer (site.yaml {name}: "
                    f"{allowed or 'none besides its default'})"
                )

    def resources(self, wants: dict[str, Any]) -> Resources:
        """What the site's launcher uses for this job: its defaults, with what the job asked for (checked)."""
        base = self.config.slurm
        gpus = wants.get("gpus")
        return dataclasses.replace(
            base,
            partition=wants.get("partition") or base.partition,
            account=wants.get("account") or base.account,
            gres=f"gpu:{gpus}" if gpus else base.gres,
            time_minutes=wants.get("time_minutes") or base.time_minutes,
        )

    def client_ranks(self, config: JobConfig, wants: dict[str, Any]) -> int:
        """How many client ranks run this site's part: what the job asks (within max_client_ranks, see check),
        else site.yaml's client_ranks; never more than the site has virtual clients."""
        asked = wants.get("client_ranks") or self.config.client_ranks
        return max(1, min(int(asked), len(config.client_groups.get(self.kit.name, [])) or 1))

    def localise(self, config: JobConfig, view: dict[str, Any], ranks: int = 1) -> JobConfig:
        """The job as this site runs it: the clients the server started with, the site's data location, and with
        ``ranks`` > 1 its virtual clients spread over that many client ranks of its own (``site_ranks``: the
        site's relay serves them, staging through site.yaml's staging_dir if it names one)."""
        root = self.config.data_root or ""
        clients = view.get("clients")
        clients = [str(c) for c in clients] if isinstance(clients, list) and clients else config.clients
        groups = {h: s for h, s in config.client_groups.items() if set(s) <= set(clients)}
        own, site_ranks = groups.get(self.kit.name), {}
        staging, staging_dir = config.staging, config.staging_dir
        if own and ranks > 1:
            del groups[self.kit.name]
            names = [f"{self.kit.name}.rank-{i + 1}" for i in range(ranks)]
            for i, name in enumerate(names):  # contiguous shares, as even as possible
                groups[name] = own[i * len(own) // ranks : (i + 1) * len(own) // ranks]
            site_ranks = {self.kit.name: names}
            # the job stages in a folder of its own there (JobConfig.staging_root)
            if self.config.staging_dir:
                staging, staging_dir = True, self.config.staging_dir
        return dataclasses.replace(
            config,
            staging=staging,
            staging_dir=staging_dir,
            clients=clients,
            client_groups=groups,
            site_ranks=site_ranks,
            min_clients=int(view.get("min_clients") or config.min_clients),
            train_args=[a.replace(DATA_ROOT, root) for a in config.train_args],
            site_train_args={
                site: [a.replace(DATA_ROOT, root) for a in args]
                for site, args in config.site_train_args.items()
            },
        )
