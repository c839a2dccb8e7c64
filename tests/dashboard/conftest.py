"""A real headless Chromium for dashboard tests: Debian's ``chromium`` and ``chromium-driver`` (apt), driven by
Selenium. Skipped without them, unless HPCFLARE_REQUIRE_BROWSER=1 (CI installs them and sets it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        msg = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("HPCFLARE_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(tmp_path):
    """start(root) -> (base url, token): `hpcflare dashboard ROOT` as a real process."""
    procs = []

    def start(root: Path, refresh: float = 0.5) -> tuple[str, str]:
        port, token = free_port(), "test-token-" + os.urandom(6).hex()
        out = open(tmp_path / f"dashboard-{port}.out", "w")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hpcflare.cli",
                    "dashboard",
                    str(root),
                    "--port",
                    str(port),
                    "--refresh",
                    str(refresh),
                ],
                env={**os.environ, "HPCFLARE_DASHBOARD_TOKEN": token},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return f"http://127.0.0.1:{port}", token
            except OSError:
                assert procs[-1].poll() is None, (tmp_path / f"dashboard-{port}.out").read_text()
                assert time.monotonic() < deadline, "the dashboard did not listen within 120 s"
                time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def artifact(name: str, tmp_path: Path) -> Path:
    """Where a test keeps what a person may want to look at (HPCFLARE_TEST_ARTIFACTS, else the test's tmp)."""
    folder = Path(os.environ.get("HPCFLARE_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
