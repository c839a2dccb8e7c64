"""The standing server's metrics endpoint: its jobs by state, the sites it hears from, audited actions."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.federation.conftest import wait_state

SITES = ["site-1", "site-2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_standing_server_exports_jobs_sites_and_actions(federation):
    port = _free_port()
    federation.server_settings_yaml["metrics"] = {"prometheus_port": port, "prometheus_bind": "127.0.0.1"}
    federation.server_settings["metrics_interval"] = 0.5
    federation.up(SITES)
    project = (("project", "consortium"),)
    wait_until(
        lambda: _scrape(port).get(("hpcflare_federation_sites_connected", project)) == 2,
        "two sites polling",
        120,
    )
    with federation.session("alice") as admin:
        job_id = admin.submit_job(federation.job(SITES, rounds=1))
        wait_state(admin, job_id, ("done",), timeout=300)
    scraped = _scrape(port)
    assert scraped[("hpcflare_federation_jobs", (*project, ("state", "done")))] == 1
    assert (
        scraped[("hpcflare_federation_actions_total", (("action", "submit"), ("outcome", "ok"), *project))]
        == 1
    )
    assert ("hpcflare_federation_site_last_poll_seconds", (*project, ("site", "site-1"))) in scraped
