"""Which startup kit a rank loads, and which sites a certificate may speak for, when client ranks host
virtual clients: a virtual client without a kit of its own shows its rank's certificate, and only for itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcflare.errors import ConfigError
from hpcflare.job import JobConfig, JobDir
from hpcflare.security.jobs import KIT_ENV, load_kit
from hpcflare.security.provision import Participant, Project, provision


def job(tmp_path: Path, kits: Path, strategy: str = "xgb_histogram") -> tuple[JobDir, JobConfig]:
    config = JobConfig(
        name="t",
        job_id="t-1",
        num_rounds=1,
        min_clients=1,
        clients=[f"site-{i}" for i in range(1, 5)],
        train_script="app/c.py",
        clients_per_rank=2,
        tls="on",
        kits_dir=str(kits),
        strategy=strategy,
    )
    return JobDir(tmp_path / "job"), config


@pytest.fixture
def kits(tmp_path: Path) -> Path:
    return provision(
        Project(
            "fed",
            [
                Participant("server", "server"),
                Participant("client-rank-1", "client"),
                Participant("client-rank-2", "client"),
                Participant("site-4", "client"),
            ],
        ),
        tmp_path / "ws",
    )


def test_hosting_rank_follows_the_client_units():
    config = JobConfig(
        name="t",
        job_id="t-1",
        num_rounds=1,
        min_clients=1,
        clients=["a", "b", "c", "d", "e"],
        train_script="app/c.py",
        clients_per_rank=2,
    )
    assert {site: config.hosting_rank(site) for site in config.clients} == {
        site: rank for rank, sites in config.client_units().items() for site in sites
    }
    assert config.hosting_rank("client-rank-1") is None and config.hosting_rank("stranger") is None
    config.clients_per_rank = 1
    assert config.hosting_rank("a") is None


def test_a_virtual_client_without_a_kit_shows_its_ranks_certificate(tmp_path, kits, monkeypatch):
    monkeypatch.delenv(KIT_ENV, raising=False)
    job_dir, config = job(tmp_path, kits)
    assert load_kit(job_dir, config, "site-1").name == "client-rank-1"
    assert load_kit(job_dir, config, "site-3").name == "client-rank-2"
    assert load_kit(job_dir, config, "site-4").name == "site-4"  # its own kit comes first
    assert (
        load_kit(job_dir, config, "site-1", required=False) is None
    )  # in-process to its rank: no link of its own


def test_hpcflare_kit_is_the_process_ranks_kit(tmp_path, kits, monkeypatch):
    monkeypatch.setenv(KIT_ENV, str(kits / "client-rank-1"))
    job_dir, config = job(tmp_path, kits)
    assert load_kit(job_dir, config, "client-rank-1").name == "client-rank-1"
    assert load_kit(job_dir, config, "site-2").name == "client-rank-1"
    assert load_kit(job_dir, config, "site-4").name == "site-4"
    with pytest.raises(
        ConfigError, match="belongs to 'client-rank-1'"
    ):  # the env kit is not another rank's site's
        load_kit(job_dir, config, "site-3")


def test_a_rank_certificate_speaks_only_for_its_own_virtual_clients(tmp_path, kits):
    from hpcflare.errors import UnknownClientError
    from hpcflare.rank_logger import RankLogger
    from hpcflare.runtime.host.membership import Membership
    from hpcflare.runtime.host.round_host import RoundHost
    from hpcflare.transport.api import Peer

    _, config = job(tmp_path, kits)
    host = RoundHost(
        config,
        config.load_settings(),
        RankLogger(tmp_path, "server", "server"),
        config.new_strategy(),
        Membership(config.clients, 10.0),
    )
    host.authorize(Peer("ipv4:1", "client-rank-1"), "site-2")
    host.authorize(Peer("ipv4:1", "site-4"), "site-4")
    for identity, site in (("client-rank-1", "site-3"), ("site-4", "site-3"), ("client-rank-2", "site-1")):
        with pytest.raises(UnknownClientError, match="may not act as site"):
            host.authorize(Peer("ipv4:1", identity), site)
