"""The dashboard in a real headless Chromium, over a real LocalEnv job: the job list shows it running, its
training chart gains a point per round, a site that failed shows the cause `logs diagnose` gives, and a request
without the token is refused."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

from tests.conftest import events, wait_until
from tests.dashboard.conftest import artifact

# site-3 raises in round 3; the others report a falling loss every round
SCRIPT = """
import sys, time
import hpcflare.client as flare
flare.init()
site = flare.get_site_name()
while flare.is_running():
    model = flare.receive()
    if site == "site-3" and model.current_round >= 2:
        raise RuntimeError("site-3 lost its data volume at round " + str(model.current_round))
    time.sleep(1.2)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()},
                             metrics={"loss": 1.0 / (1 + model.current_round)}))
"""


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _text(driver, css: str) -> str:
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:  # redrawn between the find and the read: the wait looks again
        return ""


def _attr(driver, css: str, name: str) -> str:
    """The attribute of the first match, '' when there is none (or the page redrew it between the find and
    the read: the caller's wait looks again)."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return (found[0].get_attribute(name) or "") if found else ""
    except StaleElementReferenceException:
        return ""


def test_the_dashboard_follows_a_running_job_in_a_real_browser(
    make_recipe, local_env, browser, dashboard, tmp_path
):
    recipe = make_recipe(
        SCRIPT,
        n_clients=3,
        min_clients=2,
        num_rounds=7,
        clients_per_rank=1,
        settings={"metrics_interval": 0.5},
    )
    run = recipe.execute(local_env)
    job_id = run.job_dir.load_config().job_id
    base, token = dashboard(local_env.job_root)

    assert _get(f"{base}/api/jobs")[0] == 401
    assert _get(f"{base}/api/jobs", {"Authorization": "Bearer wrong"})[0] == 401
    assert _get(f"{base}/?token=wrong")[0] == 401
    status, body = _get(f"{base}/api/jobs", {"Authorization": f"Bearer {token}"})
    assert status == 200 and job_id in [j["id"] for j in json.loads(body)["jobs"]]
    assert _get(f"{base}/api/jobs/..%2F..%2Fetc", {"Authorization": f"Bearer {token}"})[0] == 404

    browser.get(f"{base}/?token={token}")  # the token moves into a cookie; the address loses it
    assert "token=" not in browser.current_url
    row = f'#jobs tr[data-job="{job_id}"]'
    wait_until(lambda: _attr(browser, row, "data-state") == "running", "the job listed as running", 120)

    browser.get(f"{base}/#/job/{job_id}")
    chart = '[data-chart="train:loss"]'
    wait_until(
        lambda: int(_attr(browser, chart, "data-points") or 0) >= 1, "a first point on the loss chart", 120
    )
    first = int(_attr(browser, chart, "data-points"))
    wait_until(
        lambda: int(_attr(browser, chart, "data-points") or 0) > first, "a point more after a round", 120
    )
    assert browser.find_elements(By.CSS_SELECTOR, '[data-chart="sys:rss"] canvas')

    site3 = '#sites tr[data-site="site-3"]'
    wait_until(lambda: _attr(browser, site3, "data-state") in ("failed", "dead"), "site-3 shown failed", 180)
    wait_until(
        lambda: "lost its data volume" in _text(browser, f"{site3} .cause"), "site-3's cause shown", 120
    )
    browser.save_screenshot(str(artifact("dashboard-job.png", tmp_path)))
    assert artifact("dashboard-job.png", tmp_path).stat().st_size > 10_000

    run.get_result(timeout=300)
    browser.get(f"{base}/#/")
    wait_until(lambda: _attr(browser, row, "data-state") == "completed", "the job listed as completed", 60)
    assert [e for e in events(run.job_dir.root, "server") if e["event"] == "job_completed"]


def test_an_empty_folder_says_it_has_no_jobs(browser, dashboard, tmp_path):
    base, token = dashboard(tmp_path / ".." / tmp_path.name)
    browser.get(f"{base}/?token={token}")
    wait_until(lambda: "no jobs under" in _text(browser, "#note"), "the no-jobs note", 60)
    assert not browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")


@pytest.mark.parametrize(
    "argv, words", [(["/no/such/folder"], "is not a folder"), ([".", "--port", "0"], "--port")]
)
def test_bad_dashboard_arguments_are_one_line_errors(argv, words, capsys):
    from hpcflare.cli import main

    assert main(["dashboard", *argv]) != 0
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_taken_dashboard_port_is_named(capsys):
    import socket

    from hpcflare.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["dashboard", ".", "--port", str(taken.getsockname()[1])]) != 0
    assert "choose another --port" in capsys.readouterr().err
    time.sleep(0)
