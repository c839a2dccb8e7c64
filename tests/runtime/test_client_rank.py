"""Virtual clients: a client rank hosting several sites (clients_per_rank), in SimEnv and on real processes."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.env import LocalEnv, SimEnv
from hpcflare.exitcodes import ExitCode
from hpcflare.recipe import FedAvgRecipe
from tests.conftest import HELLO_MODEL, events, load_result

# each site adds its own number (site-3 adds 3) weighted by it, and reports what it saw of its identity
PER_SITE = """
import sys
import hpcflare.client as flare
flare.init()
site = flare.get_site_name()
n = int(site.split("-")[1])
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + n for k, v in model.params.items()},
                             metrics={"n": n, "argv": float(sys.argv[1]) if len(sys.argv) > 1 else -1.0},
                             meta={"NUM_STEPS_CURRENT_ROUND": n}))
"""


def expected_mean(sites: list[int]) -> float:
    return sum(n * n for n in sites) / sum(sites)  # each adds n with weight n


def server_events(run, name):
    return [e for e in events(run.job_dir.root, "server") if e["event"] == name]


@pytest.mark.parametrize("env_kind", ["sim", "local"])
def test_sites_of_a_client_rank_train_as_themselves_behind_one_link(make_recipe, tmp_path, env_kind):
    """7 sites in client ranks of 3: uneven groups, weights kept, each site its own name and train_args."""
    recipe = make_recipe(
        PER_SITE,
        n_clients=7,
        min_clients=7,
        num_rounds=2,
        clients_per_rank=3,
        site_train_args={"site-5": ["55"]},
    )
    env = (SimEnv if env_kind == "sim" else LocalEnv)(job_root=tmp_path / "jobs", verbose=False)
    run = recipe.execute(env)
    result = load_result(run.get_result(timeout=120))["numpy_key"]
    np.testing.assert_allclose(result, HELLO_MODEL + 2 * expected_mean(list(range(1, 8))), rtol=1e-6)
    partials = server_events(run, "partial_accepted")
    assert sorted((e["round"], e["relay"], tuple(e["sites"])) for e in partials) == [
        (r, rank, sites)
        for r in (1, 2)
        for rank, sites in (
            ("client-rank-1", ("site-1", "site-2", "site-3")),
            ("client-rank-2", ("site-4", "site-5", "site-6")),
            ("client-rank-3", ("site-7",)),
        )
    ]
    assert server_events(run, "result_accepted") == []  # nothing came from a site directly
    done = server_events(run, "round_completed")[-1]
    assert {site: m["n"] for site, m in done["metrics"].items()} == {f"site-{i}": i for i in range(1, 8)}
    assert {site: m["argv"] for site, m in done["metrics"].items() if m["argv"] != -1.0} == {"site-5": 55.0}
    registered = {e["site"]: e["via"] for e in server_events(run, "client_registered")}
    assert registered == {f"site-{i}": f"client-rank-{(i + 2) // 3}" for i in range(1, 8)}
    if env_kind == "local":  # one process per client rank, not per site
        assert sorted(run.exit_codes) == ["client-rank-1", "client-rank-2", "client-rank-3", "server"]
        assert set(run.exit_codes.values()) == {0}


CRASH_IN_ROUND_2 = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    if flare.get_site_name() == "site-2" and model.current_round == 1:
        raise RuntimeError("site-2's data loader broke")
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def test_a_crashing_virtual_client_fails_alone(make_recipe, local_env):
    run = make_recipe(CRASH_IN_ROUND_2, n_clients=4, min_clients=3, num_rounds=3, clients_per_rank=4).execute(
        local_env
    )
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 3)
    failed = server_events(run, "client_failed")
    assert [e["site"] for e in failed] == ["site-2"] and "data loader broke" in failed[0]["reason"]
    rounds = server_events(run, "round_completed")
    assert [sorted(e["accepted"]) for e in rounds] == [["site-1", "site-2", "site-3", "site-4"]] + [
        ["site-1", "site-3", "site-4"]
    ] * 2
    site2 = [e for e in events(run.job_dir.root, "site-2") if e["event"] == "client_failed"]
    assert site2 and site2[0]["exit_code"] == int(ExitCode.TRAIN_SCRIPT_FAILED)
    assert run.exit_codes["client-rank-1"] == int(
        ExitCode.TRAIN_SCRIPT_FAILED
    )  # the rank reports its failed site


def test_with_staging_the_rank_reads_the_staged_model_once_for_its_sites(make_recipe, local_env):
    """The rank maps the staged file (not a gRPC pull) into the one copy its sites share; the sites neither
    read the file again nor stage their results: those stay in the rank's process."""
    run = make_recipe(
        PER_SITE, n_clients=4, min_clients=4, num_rounds=2, clients_per_rank=2, staging=True
    ).execute(local_env)
    np.testing.assert_allclose(
        load_result(run.get_result(timeout=120))["numpy_key"],
        HELLO_MODEL + 2 * expected_mean([1, 2, 3, 4]),
        rtol=1e-6,
    )
    for rank in ("client-rank-1", "client-rank-2"):
        assert [e["via"] for e in events(run.job_dir.root, rank) if e["event"] == "relay_round"] == [
            "staging"
        ] * 2
    for site in ("site-1", "site-4"):
        got = [e["via"] for e in events(run.job_dir.root, site) if e["event"] == "model_received"]
        assert got == ["client rank", "client rank"]
        assert {e["via"] for e in events(run.job_dir.root, site) if e["event"] == "result_sent"} == {
            "client rank"
        }


# site-1 trains in place on the arrays it received; the others must still see the global model unchanged
IN_PLACE = """
import hpcflare.client as flare
flare.init()
n = int(flare.get_site_name().split("-")[1])
while flare.is_running():
    model = flare.receive()
    if n == 1:
        for v in model.params.values():
            v += 100.0  # the received arrays are the site's own: writable, private
        out = model.params
    else:
        out = {k: v + n for k, v in model.params.items()}
    flare.send(flare.FLModel(params=out, metrics={"seen": float(next(iter(model.params.values())).ravel()[0])}))
"""


@pytest.mark.parametrize("env_kind", ["sim", "local"])
def test_a_site_writing_into_its_received_model_changes_nobody_elses(make_recipe, tmp_path, env_kind):
    run = make_recipe(IN_PLACE, n_clients=3, min_clients=3, num_rounds=2, clients_per_rank=3).execute(
        (SimEnv if env_kind == "sim" else LocalEnv)(job_root=tmp_path / "jobs", verbose=False)
    )
    result = load_result(run.get_result(timeout=120))["numpy_key"]
    np.testing.assert_allclose(result, HELLO_MODEL + 2 * (100 + 2 + 3) / 3, rtol=1e-6)
    first = float(HELLO_MODEL.ravel()[0])
    rounds = server_events(run, "round_completed")
    assert rounds[0]["metrics"]["site-2"]["seen"] == rounds[0]["metrics"]["site-3"]["seen"] == first
    assert rounds[0]["metrics"]["site-1"]["seen"] == first + 100  # its own write, seen by itself only
    registered = [e for e in events(run.job_dir.root, "client-rank-1") if e["event"] == "registered"]
    assert registered[0]["transport"] == (
        "inproc" if env_kind == "sim" else "grpc"
    )  # SimEnv: no loopback gRPC


BAD_UPDATES = """
import numpy as np
import hpcflare.client as flare
flare.init()
site = flare.get_site_name()
while flare.is_running():
    model = flare.receive()
    params = {k: v + 1 for k, v in model.params.items()}
    if site == "site-2":
        params = {k: np.full_like(v, np.nan) for k, v in params.items()}
    if site == "site-3":
        params = {k: np.zeros((2, 2), v.dtype) for k, v in params.items()}
    if site == "site-4":
        params = {**params, "extra": np.zeros(3, np.float32)}
    flare.send(flare.FLModel(params=params))
"""


def test_virtual_clients_results_get_every_check_a_streamed_one_gets(make_recipe, local_env):
    """NaN, a wrong shape, an unknown tensor from sites of a client rank: rejected there with the reason, the
    others' results aggregated."""
    run = make_recipe(BAD_UPDATES, n_clients=4, min_clients=1, num_rounds=1, clients_per_rank=4).execute(
        local_env
    )
    np.testing.assert_allclose(
        load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 1, rtol=1e-6
    )
    partial = server_events(run, "partial_accepted")[0]
    assert partial["sites"] == ["site-1"]
    rejected = partial["rejected"]
    assert (
        "NaN" in rejected["site-2"]
        and "shape" in rejected["site-3"]
        and "unknown tensor" in rejected["site-4"]
    )


def test_client_ranks_behind_relays(make_recipe, local_env):
    run = make_recipe(
        PER_SITE, n_clients=8, min_clients=8, num_rounds=2, clients_per_rank=2, relays=2
    ).execute(local_env)
    np.testing.assert_allclose(
        load_result(run.get_result(timeout=120))["numpy_key"],
        HELLO_MODEL + 2 * expected_mean(list(range(1, 9))),
        rtol=1e-6,
    )
    partials = server_events(run, "partial_accepted")
    assert sorted({e["relay"] for e in partials}) == ["relay-1", "relay-2"]  # the server hears only relays
    assert sorted(s for e in partials if e["round"] == 1 for s in e["sites"]) == [
        f"site-{i}" for i in range(1, 9)
    ]
    relayed = [
        e
        for r in ("relay-1", "relay-2")
        for e in events(run.job_dir.root, r)
        if e["event"] == "partial_accepted"
    ]
    assert sorted({e["relay"] for e in relayed}) == [f"client-rank-{i}" for i in range(1, 5)]


MEDIAN = """
import hpcflare.client as flare
flare.init()
n = int(flare.get_site_name().split("-")[1])
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + n * n for k, v in model.params.items()}))
"""


@pytest.mark.parametrize("strategy", ["fedmedian", "cyclic"])
def test_strategies_without_partial_sums_keep_each_site_s_update(make_recipe, sim_env, strategy):
    """FedMedian: the client rank forwards each validated update; cyclic (no partials at all): each virtual
    client keeps its own link to the server."""
    recipe = make_recipe(
        MEDIAN, n_clients=5, min_clients=5, num_rounds=1 if strategy == "fedmedian" else 5, clients_per_rank=2
    )
    recipe.strategy = strategy
    run = recipe.execute(sim_env)
    result = load_result(run.get_result(timeout=120))["numpy_key"]
    if strategy == "fedmedian":
        np.testing.assert_allclose(result, HELLO_MODEL + 9)  # median of 1, 4, 9, 16, 25
        assert {e["relay"] for e in server_events(run, "partial_accepted")} == set()
    else:
        np.testing.assert_allclose(
            result, HELLO_MODEL + sum(n * n for n in range(1, 6))
        )  # every site in turn
        assert not any(e["event"] == "client_rank_registered" for e in events(run.job_dir.root, "server"))


def test_default_settings_run_512_sites_on_this_machine(tmp_path):
    """No profile, no clients_per_rank: 'auto' packs 512 sites into a client rank per core."""
    script = tmp_path / "client.py"
    script.write_text(PER_SITE)
    recipe = FedAvgRecipe(
        name="wide",
        model={"w": np.zeros(16, np.float32)},
        min_clients=512,
        num_rounds=2,
        train_script=script,
        n_clients=512,
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", verbose=False))
    np.testing.assert_allclose(
        load_result(run.get_result(timeout=300))["w"], 2 * expected_mean(list(range(1, 513))), rtol=1e-5
    )
    config = run.job_dir.load_config()
    assert config.per_rank > 1 and len(config.client_units()) < 64
    assert all(code == 0 for code in run.exit_codes.values())


def test_each_script_thread_sees_its_own_argv():
    import argparse
    import sys
    import threading

    from hpcflare.runtime.script_runner import ThreadArgv

    saved = sys.argv
    seen: dict[str, list[str]] = {}
    try:

        def site(name: str, args: list[str]) -> None:
            ThreadArgv.set_for_thread([f"/app/{name}.py", *args])
            parser = argparse.ArgumentParser()
            parser.add_argument("--lr", type=float)
            seen[name] = [str(parser.parse_args().lr), sys.argv[0], str(len(sys.argv))]
            ThreadArgv.set_for_thread(None)

        threads = [threading.Thread(target=site, args=(f"s{i}", ["--lr", str(i)])) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == {f"s{i}": [f"{float(i)}", f"/app/s{i}.py", "3"] for i in range(3)}
        assert list(sys.argv) == list(saved)  # any other thread sees the process's own argv
    finally:
        sys.argv = saved


def test_auto_clients_per_rank_rules(tmp_path, monkeypatch):
    from hpcflare.runtime import client_rank as job

    monkeypatch.setattr(job.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert job.local_client_slots(8) is None  # up to 4 sites per core: a process each
    assert job.local_client_slots(9) == 2  # beyond: a client rank per core
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert job.local_client_slots(100) == 3  # or per visible GPU
    assert job.auto_clients_per_rank(10_000, 16) == 625 and job.auto_clients_per_rank(10, 3) == 4

    script = tmp_path / "c.py"
    script.write_text("print(1)\n")
    job_dir = FedAvgRecipe(
        name="a", model={"w": np.zeros(2, np.float32)}, min_clients=10, n_clients=10, train_script=script
    ).export(tmp_path / "jobs")
    assert job.settle_clients_per_rank(job_dir, None).clients_per_rank == "auto"  # nothing to spread over yet
    assert (
        job.settle_clients_per_rank(job_dir, None, lambda c: 0).clients_per_rank == "auto"
    )  # e.g. a server-only allocation
    assert (
        job.settle_clients_per_rank(job_dir, None, lambda c: 3).clients_per_rank == 4
    )  # 10 sites over 3 client ranks
    assert job_dir.load_config().client_units()["client-rank-3"] == ["site-9", "site-10"]
    assert (
        job.settle_clients_per_rank(job_dir, 2, lambda c: 3).clients_per_rank == 2
    )  # an Env's own value wins
    with pytest.raises(Exception, match="clients_per_rank must be"):
        job.settle_clients_per_rank(job_dir, 0)


HANGS_AFTER_THE_JOB = """
import time
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
if flare.get_site_name() == "site-2":
    time.sleep(600)  # never returns
"""


@pytest.mark.parametrize(
    "strategy", ["fedavg", "cyclic"]
)  # with a rank host, and with direct virtual clients
def test_a_hung_virtual_client_does_not_hold_its_rank_after_the_job(make_recipe, local_env, strategy):
    recipe = make_recipe(HANGS_AFTER_THE_JOB, n_clients=2, min_clients=2, num_rounds=2, clients_per_rank=2)
    recipe.strategy = strategy
    run = recipe.execute(local_env)
    run.get_result(timeout=120)
    stopped = [e for e in events(run.job_dir.root, "client-rank-1") if e["event"] == "script_stopped"]
    assert stopped and stopped[0]["sites"] == ["site-2"]
    assert run.exit_codes["client-rank-1"] == int(ExitCode.ABORTED)  # it exited by itself, not killed


TRACKED = """
import hpcflare.client as flare
from hpcflare.client.tracking import SummaryWriter
flare.init()
writer = SummaryWriter()
n = int(flare.get_site_name().split("-")[1])
while flare.is_running():
    model = flare.receive()
    for step in range(3):
        writer.add_scalar("loss", n * 10 + step, global_step=step)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}, metrics={"acc": n}))
"""


def test_virtual_clients_tracking_reaches_the_server_in_each_site_s_name(make_recipe, local_env):
    import csv

    run = make_recipe(TRACKED, n_clients=4, min_clients=4, num_rounds=2, clients_per_rank=2).execute(
        local_env
    )
    run.get_result(timeout=120)
    rows = list(csv.DictReader(open(run.job_dir.root / "tracking" / "steps.csv")))
    got = sorted(
        (r["site"], int(r["round"]), int(r["step"]), float(r["value"])) for r in rows if r["key"] == "loss"
    )
    assert got == sorted(
        (f"site-{n}", rnd, step, float(n * 10 + step))
        for n in range(1, 5)
        for rnd in (1, 2)
        for step in range(3)
    )


def test_a_killed_client_rank_loses_its_sites_and_the_job_goes_on(make_recipe, local_env):
    import os
    import signal

    from tests.conftest import SLOW, wait_for_event

    run = make_recipe(
        SLOW, n_clients=4, min_clients=2, num_rounds=3, clients_per_rank=2, train_args="1"
    ).execute(local_env)
    wait_for_event(run.job_dir.root, "site-1", "task_received")
    os.kill(run.client_pid("site-1"), signal.SIGKILL)  # the whole rank: site-1 and site-2
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 3)
    dead = sorted(e["site"] for e in server_events(run, "client_dead"))
    assert dead == ["client-rank-1", "site-1", "site-2"]  # the rank, and its sites once it stopped vouching
    assert sorted(server_events(run, "round_completed")[-1]["accepted"]) == ["site-3", "site-4"]
    assert run.exit_codes["client-rank-1"] == -signal.SIGKILL and run.exit_codes["client-rank-2"] == 0


def test_site_clients_make_a_named_client_group_that_folds_its_results(tmp_path):
    """site_clients={"hospital-a": 3}: hospital-a.1..3 run in one client rank named hospital-a, which sends one
    partial; the other site runs alone. The group's host is a rank, not a site; its name speaks for its sites."""
    script = tmp_path / "client.py"
    script.write_text(
        "import hpcflare.client as flare\nflare.init()\n"
        "add = {'hospital-a.1': 1.0, 'hospital-a.2': 2.0, 'hospital-a.3': 3.0, 'hospital-b': 10.0}"
        "[flare.get_site_name()]\n"
        "while flare.is_running():\n"
        "    m = flare.receive()\n"
        "    flare.send(flare.FLModel(params={'numpy_key': m.params['numpy_key'] + add}))\n"
    )
    recipe = FedAvgRecipe(
        name="groups",
        model={"numpy_key": HELLO_MODEL},
        min_clients=4,
        num_rounds=2,
        train_script=script,
        clients=["hospital-a", "hospital-b"],
        site_clients={"hospital-a": 3},
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", verbose=False))
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_allclose(result["numpy_key"], HELLO_MODEL + 2 * (1 + 2 + 3 + 10) / 4, rtol=1e-6)
    config = run.job_dir.load_config()
    assert config.clients == ["hospital-a.1", "hospital-a.2", "hospital-a.3", "hospital-b"]
    assert config.participants() == ["hospital-a", "hospital-b"]
    assert config.client_units() == {"hospital-a": config.clients[:3], "hospital-b": ["hospital-b"]}
    assert config.hosting_rank("hospital-a.2") == "hospital-a" and config.hosting_rank("hospital-b") is None
    partials = [e["msg"] for e in server_events(run, "partial_accepted")]
    assert len(partials) == 2 and all("from hospital-a over 3 client(s)" in m for m in partials)


def test_client_groups_are_checked(tmp_path):
    from hpcflare.errors import ConfigError
    from hpcflare.job import JobConfig

    base = {"name": "g", "job_id": "g-1", "num_rounds": 1, "min_clients": 1, "clients": ["a.1", "a.2", "b"]}
    base["train_script"] = "app/x.py"
    for groups, message in (
        ({"a": ["a.1", "zz"]}, "every grouped site must be one of the job's clients"),
        ({"a": ["a.1"], "c": ["a.1"]}, "in one group only"),
        ({"b": ["a.1"]}, "host name 'b' must be a valid name that is not one of the sites"),
        ({"a": []}, "non-empty list"),
    ):
        with pytest.raises(ConfigError, match=message):
            JobConfig.from_dict({**base, "client_groups": groups})
    # a strategy without partial sums: no host rank upstream, but the group's name still speaks for its sites
    config = JobConfig.from_dict(
        {**base, "client_groups": {"a": ["a.1", "a.2"]}, "strategy": "cross_site_eval"}
    )
    assert config.rank_hosts() == {} and config.hosting_rank("a.1") == "a"
