"""A real LocalEnv job exports its metrics three ways: the Prometheus endpoint is scraped and parsed with
prometheus_client's own parser while the job runs, a UDP socket receives the StatsD pushes, and the textfile is
valid exposition format. A site killed mid-job shows as dead."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SLOW, events, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value} of every sample the endpoint serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _value(scraped, name, **labels) -> float:
    for key, value in scraped.get(name, {}).items():
        if all(dict(key).get(k) == v for k, v in labels.items()):
            return value
    return float("nan")


def test_prometheus_statsd_and_textfile_follow_a_running_job(make_recipe, local_env, tmp_path):
    port = _free_port()
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind(("127.0.0.1", 0))
    statsd.settimeout(0.2)
    textfile = tmp_path / "textfile" / "hpcflare-{job_id}.prom"
    recipe = make_recipe(
        SLOW,
        n_clients=3,
        min_clients=2,
        num_rounds=6,
        train_args="1.0",
        clients_per_rank=1,  # a process per site: one of them is killed below
        settings={"metrics_interval": 0.5},
        metrics={
            "prometheus_port": port,
            "prometheus_bind": "127.0.0.1",
            "textfile": str(textfile),
            "statsd_address": f"127.0.0.1:{statsd.getsockname()[1]}",
        },
    )
    run = recipe.execute(local_env)
    job, job_id = run.job_dir.root, run.job_dir.load_config().job_id
    wait_until(lambda: any(e["event"] == "round_completed" for e in events(job, "server")), "round 1", 180)
    scraped = _scrape(port)
    assert _value(scraped, "hpcflare_rounds_completed_total", job=job_id) >= 1
    assert _value(scraped, "hpcflare_sites_live", job=job_id) == 3
    assert _value(scraped, "hpcflare_registrations_total") == 3
    assert _value(scraped, "hpcflare_round_duration_seconds_count") >= 1
    assert _value(scraped, "hpcflare_link_bytes_total", link="site-1", direction="out") > 0
    assert _value(scraped, "hpcflare_link_bytes_total", link="site-1", direction="in") > 0
    # every rank's own sample reached the server through its heartbeats
    wait_until(
        lambda: (
            {dict(k)["rank"] for k in _scrape(port).get("hpcflare_process_resident_memory_bytes", {})}
            >= {"server", "site-1", "site-2", "site-3"}
        ),
        "a system sample from every rank",
        60,
    )
    before = _value(_scrape(port), "hpcflare_rounds_completed_total")
    wait_until(
        lambda: _value(_scrape(port), "hpcflare_rounds_completed_total") > before, "another round", 120
    )

    os.kill(run.client_pid("site-3"), signal.SIGKILL)
    wait_until(
        lambda: _value(_scrape(port), "hpcflare_sites", state="dead") == 1,
        "site-3 counted dead",
        120,
    )
    scraped = _scrape(port)
    assert _value(scraped, "hpcflare_sites_live") == 2

    packets = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(b"rounds_completed_total" in p for p in packets):
        try:
            packets.append(statsd.recv(65535))
        except TimeoutError:
            pass
    lines = b"\n".join(packets).decode().splitlines()
    assert any(line.startswith("hpcflare.rounds_completed_total:") and "|c" in line for line in lines), lines[
        :20
    ]
    assert any(line.startswith("hpcflare.sites_live:") and "|g|#job:" in line for line in lines), lines[:20]
    assert all(len(p) <= 1400 for p in packets)

    run.get_result(timeout=300)
    written = (tmp_path / "textfile" / f"hpcflare-{job_id}.prom").read_text()
    families = {f.name: f for f in text_string_to_metric_families(written)}
    assert families["hpcflare_rounds_completed"].samples[0].value == 6
    series = (job / "metrics" / "series.jsonl").read_text().splitlines()
    assert len(series) >= 2 and '"round":6' in series[-1]


def test_a_taken_metrics_port_fails_the_job_at_start_naming_the_setting(make_recipe, local_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        recipe = make_recipe(
            SLOW, n_clients=2, metrics={"prometheus_port": port, "prometheus_bind": "127.0.0.1"}
        )
        run = recipe.execute(local_env)
        with pytest.raises(Exception, match=rf"metrics.prometheus_port={port}"):
            run.get_result(timeout=120)
    status = run.job_dir.read_status()
    assert status["state"] == "failed" and "metrics.prometheus_port" in status["message"]


def test_an_unreachable_statsd_address_never_holds_a_job_up(make_recipe, local_env):
    """A name that does not resolve, and a port nothing listens on: pushes are dropped and counted."""
    recipe = make_recipe(
        SLOW,
        n_clients=2,
        num_rounds=2,
        train_args="0.2",
        settings={"metrics_interval": 0.2},
        metrics={"statsd_address": "no-such-host.invalid:8125"},
    )
    run = recipe.execute(local_env)
    run.get_result(timeout=180)
    rounds = [e for e in events(run.job_dir.root, "server") if e["event"] == "round_completed"]
    assert len(rounds) == 2
    assert not [e for e in events(run.job_dir.root, "server") if e["event"] == "metrics_export_failed"]


@pytest.mark.parametrize(
    "metrics, words",
    [
        ({"prometheus_port": 70000}, "prometheus_port"),
        ({"statsd_address": "nohostport"}, "statsd_address must read HOST:PORT"),
        ({"site_series_cap": -1}, "site_series_cap"),
        ({"prometheus": 9464}, "unknown key"),
        ("9464", "must be a mapping"),
    ],
)
def test_bad_metrics_sections_are_refused_before_anything_runs(make_recipe, local_env, metrics, words):
    from hpcflare.errors import ConfigError

    recipe = make_recipe(SLOW, n_clients=2, metrics=metrics)
    with pytest.raises(ConfigError, match=words):
        recipe.execute(local_env)


def test_relays_forward_their_ranks_samples_so_the_server_sees_every_rank(make_recipe, local_env):
    """Client ranks heartbeat their relay only; the relay's own heartbeats carry their samples upstream."""
    port = _free_port()
    recipe = make_recipe(
        SLOW,
        n_clients=4,
        min_clients=4,
        num_rounds=3,
        train_args="1.0",
        relays=1,
        clients_per_rank=2,
        settings={"metrics_interval": 0.3},
        metrics={"prometheus_port": port, "prometheus_bind": "127.0.0.1"},
    )
    run = recipe.execute(local_env)

    def roles() -> dict[str, str]:
        try:
            found = _scrape(port).get("hpcflare_process_resident_memory_bytes", {})
        except OSError:  # the server rank has not opened its endpoint yet
            return {}
        return {dict(k)["rank"]: dict(k)["role"] for k in found}

    wait_until(
        lambda: (
            roles()
            == {
                "server": "server",
                "relay-1": "relay",
                "client-rank-1": "client rank",
                "client-rank-2": "client rank",
            }
        ),
        "samples of the relay and of both client ranks behind it",
        120,
    )
    run.get_result(timeout=300)
