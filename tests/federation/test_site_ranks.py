"""An institution that runs its part of a job on several client ranks behind a relay of its own: the server
sees one site (one registration, one partial per round over the WAN); the site's relay serves its ranks, staging
each round's model on the site's own shared filesystem."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from hpcflare.errors import ConfigError
from hpcflare.federation.config import SiteConfig
from hpcflare.federation.site_policy import SitePolicy
from hpcflare.job import JobConfig, JobDir
from hpcflare.logs.diagnose import report
from hpcflare.recipe import CyclicRecipe
from hpcflare.security.tls import StartupKit
from tests.federation.conftest import SCRIPT, wait_state

SITES = ["site-1", "site-2", "site-3"]


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_site_runs_its_virtual_clients_on_its_own_relay_and_client_ranks(federation, tmp_path):
    staging = tmp_path / "site-1-lustre"
    federation.start_server()
    federation.start_agent("site-1", max_client_ranks=2, staging_dir=str(staging))
    federation.start_agent("site-2")
    federation.start_agent("site-3")
    federation.wait_connected(SITES)
    recipe = federation.recipe(SITES, rounds=2, site_clients={"site-1": 4}, name="site-relay")
    job_id, status, folder, weights = federation.run(
        recipe.export(tmp_path / "admin-jobs").root, resource_spec={"site-1": {"client_ranks": 2}}
    )
    # site-1.1..4 add 1.1..1.4, site-2 and site-3 add 2 and 3: the mean of six clients, twice
    np.testing.assert_allclose(weights, np.full(3, 2 * (1.1 + 1.2 + 1.3 + 1.4 + 2 + 3) / 6), rtol=1e-6)
    server = _events(folder / "job" / "logs" / "server.jsonl")
    folded = [e["msg"] for e in server if e["event"] == "partial_accepted"]
    assert len(folded) == 2 and all("from site-1 over 4 client(s)" in m for m in folded), folded
    registered = {e.get("site") for e in server if e["event"].endswith("registered")}
    assert "site-1" in registered and not any("rank-" in str(s) for s in registered)  # ranks stay at the site

    logs = federation.site_dir("site-1") / "work" / "jobs" / job_id / "job" / "logs"
    relay = _events(logs / "site-1.jsonl")
    assert any(e["event"] == "relay_started" for e in relay)
    assert sum(e["event"] == "model_staged" for e in relay) == 2  # on the site's own filesystem
    assert sum(e["event"] == "partial_sent" for e in relay) == 2
    for rank, sites in (
        ("site-1.rank-1", ["site-1.1", "site-1.2"]),
        ("site-1.rank-2", ["site-1.3", "site-1.4"]),
    ):
        events = _events(logs / f"{rank}.jsonl")
        assert [e["via"] for e in events if e["event"] == "relay_round"] == ["staging", "staging"], rank
        assert {e["site"] for e in events if e["event"] == "result_accepted"} == set(sites)
    assert not (staging / job_id).exists() or not any((staging / job_id / "results").rglob("*.safetensors"))
    detail = [status["sites"]["site-1"]["detail"]]
    assert sorted(status["sites"]) == SITES, detail  # the admin sees institutions


@pytest.fixture
def kit(tmp_path):
    from hpcflare.security.provision import Project, provision

    project = {
        "project": "p",
        "participants": [{"name": "server", "role": "server"}, {"name": "hosp", "role": "client"}],
    }
    return StartupKit.load(provision(Project.from_dict(project), tmp_path / "kits") / "hosp")


def _job(clients: int) -> JobConfig:
    sites = [f"hosp.{i}" for i in range(1, clients + 1)]
    return JobConfig(
        name="j",
        job_id="j-1",
        num_rounds=1,
        train_script="train.py",
        clients=[*sites, "other"],
        client_groups={"hosp": sites},
        min_clients=1,
    )


def test_virtual_clients_are_spread_over_the_ranks_the_job_asks_for(kit):
    policy = SitePolicy(kit, SiteConfig(max_client_ranks=4, staging_dir="/lustre/fl"))
    config = _job(5)
    ranks = policy.client_ranks(config, {"client_ranks": 2})
    local = policy.localise(config, {}, ranks)
    assert local.client_groups == {
        "hosp.rank-1": ["hosp.1", "hosp.2"],
        "hosp.rank-2": ["hosp.3", "hosp.4", "hosp.5"],
    }
    assert local.site_ranks == {"hosp": ["hosp.rank-1", "hosp.rank-2"]}
    assert (local.staging, local.staging_root(Path("/x"))) == (True, Path("/lustre/fl/j-1"))
    local.validate()
    assert local.site_relay_of("hosp.rank-2") == "hosp" and local.site_relay_of("hosp.3") is None
    # never more ranks than virtual clients; site.yaml's client_ranks when the job asks none; one is one
    assert policy.client_ranks(_job(3), {"client_ranks": 4}) == 3
    assert SitePolicy(kit, SiteConfig(client_ranks=2, max_client_ranks=2)).client_ranks(_job(3), {}) == 2
    assert policy.localise(config, {}, 1).site_ranks == {}
    assert (
        policy.client_ranks(
            JobConfig(
                name="j", job_id="j", num_rounds=1, train_script="t.py", clients=["hosp"], min_clients=1
            ),
            {"client_ranks": 3},
        )
        == 1
    )


def test_site_yaml_client_ranks_and_staging_dir_are_checked(tmp_path):
    path = tmp_path / "site.yaml"
    for text, words in (
        ("client_ranks: 3\nmax_client_ranks: 2\n", "between 1 and max_client_ranks"),
        ("staging_dir: relative/dir\n", "absolute path"),
        ("max_client_ranks: null\n", "whole number"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=words):
            SiteConfig.load(path)


def test_site_ranks_must_name_client_groups():
    config = _job(2)
    config.site_ranks = {"hosp": ["hosp.rank-1"]}
    with pytest.raises(ConfigError, match="site_ranks"):
        config.validate()


def test_a_sites_relay_and_client_ranks_as_one_job_on_its_own_slurm_cluster(federation, slurm, tmp_path):
    """site-2's part (its relay and two client ranks) is one sbatch job of three tasks on its own Slurm
    cluster, across its nodes; the server and the other sites run locally."""
    federation.start_server()
    federation.start_agent("site-1")
    federation.start_agent(
        "site-2",
        launcher="slurm",
        slurm={"partition": "debug", "time_minutes": 10, "extra": ["--nodes=3"]},
        client_ranks=2,
        max_client_ranks=2,
    )
    federation.wait_connected(["site-1", "site-2"])
    recipe = federation.recipe(["site-1", "site-2"], rounds=2, site_clients={"site-2": 3}, name="slurm-relay")
    job_id, _, _, weights = federation.run(recipe.export(tmp_path / "admin-jobs").root, timeout=400)
    np.testing.assert_allclose(weights, np.full(3, 2 * (1 + 2.1 + 2.2 + 2.3) / 4), rtol=1e-6)
    job = federation.site_dir("site-2") / "work" / "jobs" / job_id / "job"
    script = (job / "launch" / "site-2.sbatch").read_text()
    assert "#SBATCH --ntasks=3" in script and "srun" in script and "--role site" in script
    relay = _events(job / "logs" / "site-2.jsonl")
    assert sum(e["event"] == "partial_sent" for e in relay) == 2
    started = next(e for e in relay if e["event"] == "relay_started")
    ranks = {e["site"]: e["node"] for e in relay if e["event"] == "client_rank_registered"}
    assert sorted(ranks) == ["site-2.rank-1", "site-2.rank-2"]
    assert len({started["node"], *ranks.values()}) == 3, (started, ranks)  # one task per node


def _task_pid(marker: str, rank: int) -> int | None:
    """The pid of task ``rank`` of the site launch whose command line holds ``marker``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            "hpcflare.runtime.launch" in cmdline
            and marker in cmdline
            and f"HPCFLARE_RANK={rank}".encode() in environ
        ):
            return int(proc.name)
    return None


def test_a_sites_relay_that_dies_fails_that_site_with_its_cause_and_the_job_goes_on(federation, tmp_path):
    federation.start_server()
    federation.start_agent("site-1", max_client_ranks=2)
    federation.start_agent("site-2")
    federation.start_agent("site-3")
    federation.wait_connected(SITES)
    recipe = federation.recipe(
        SITES,
        rounds=6,
        sleep=0.5,
        min_clients=2,
        site_clients={"site-1": 2},
        name="relay-dies",
        settings={"heartbeat_interval": 1, "heartbeat_timeout": 5, "server_lost_timeout": 10},
    )
    with federation.session("alice") as admin:
        job_id = admin.submit_job(
            recipe.export(tmp_path / "admin-jobs").root, resource_spec={"site-1": {"client_ranks": 2}}
        )
        relay_log = federation.site_dir("site-1") / "work" / "jobs" / job_id / "job" / "logs" / "site-1.jsonl"
        deadline = time.monotonic() + 240
        while not (relay_log.is_file() and "partial_sent" in relay_log.read_text()):
            assert time.monotonic() < deadline, admin.get_job_status(job_id)
            time.sleep(0.2)
        pid = _task_pid("--site site-1", 0)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        status = wait_state(admin, job_id, ("done", "failed"), timeout=300)
        assert status["state"] == "done", status  # site-2 and site-3 carry on (min_clients=2)
        deadline = time.monotonic() + 120
        while admin.get_job_status(job_id)["sites"]["site-1"]["state"] not in ("failed", "done", "aborted"):
            assert time.monotonic() < deadline, admin.get_job_status(job_id)["sites"]
            time.sleep(0.3)
        site = admin.get_job_status(job_id)["sites"]["site-1"]
    assert site["state"] == "failed", site
    assert "site-1's relay lost" in site["detail"] and "exit 137" in site["detail"], site
    logs = federation.site_dir("site-1") / "work" / "jobs" / job_id / "job" / "logs"
    for rank in ("site-1.rank-1", "site-1.rank-2"):  # each rank says it once, however often it retried
        assert sum(e["event"] == "relay_lost" for e in _events(logs / f"{rank}.jsonl")) <= 1
    # the site's own admin diagnoses its part where it ran: no server here, the site's cause first
    text = report(JobDir(logs.parent))
    assert text.startswith(f"job {job_id}, site-1's part: failed"), text
    assert "site-1's relay lost" in text.splitlines()[1] and "server never logged" not in text


def test_without_partials_a_sites_client_ranks_reach_the_server_themselves(federation, tmp_path):
    """Cyclic weight transfer takes whole models, not partials: site-1's two client ranks run without a relay,
    each of its virtual clients with its own link (site-1's certificate) to the job's server."""
    federation.start_server()
    federation.start_agent("site-1", client_ranks=2, max_client_ranks=2)
    federation.start_agent("site-2")
    federation.wait_connected(["site-1", "site-2"])
    sites = ["site-1", "site-2"]
    recipe = CyclicRecipe(
        name="cyclic-ranks",
        model={"w": np.zeros(3, dtype=np.float32)},
        clients=sites,
        min_clients=4,
        num_rounds=1,
        train_script=SCRIPT,
        train_args="--data {data_root}/offset.txt",
        settings_profile="dev",
        site_clients={"site-1": 3},
    )
    job_id, _, folder, weights = federation.run(recipe.export(tmp_path / "admin-jobs").root)
    np.testing.assert_allclose(weights, np.full(3, 1.1 + 1.2 + 1.3 + 2), rtol=1e-6)  # one pass, every client
    server = _events(folder / "job" / "logs" / "server.jsonl")
    registered = {e["site"] for e in server if e["event"] == "client_registered"}
    assert registered == {"site-1.1", "site-1.2", "site-1.3", "site-2"}
    logs = federation.site_dir("site-1") / "work" / "jobs" / job_id / "job" / "logs"
    assert not (logs / "site-1.jsonl").exists()  # no relay
    assert {p.name for p in logs.glob("site-1.rank-*.jsonl")} == {
        "site-1.rank-1.jsonl",
        "site-1.rank-2.jsonl",
    }
