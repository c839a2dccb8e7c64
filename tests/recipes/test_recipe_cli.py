"""Every recipes/*/job.py takes the same flags (hpcflare.recipe.job_cli) and they do what they say."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from hpcflare.recipe.job_cli import UNIFORM_FLAGS
from tests.conftest import REPO

RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/job.py"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_uniform_flags_and_export_only(recipe, tmp_path):
    if recipe == "hello-tf":
        pytest.importorskip("tensorflow")  # the [tf] extra
    job_py = REPO / "recipes" / recipe / "job.py"
    shown = subprocess.run(
        [sys.executable, str(job_py), "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    missing = [flag for flag in UNIFORM_FLAGS if flag not in shown.stdout]
    assert missing == [], f"{recipe}/job.py lacks {missing}"
    rounds = ["--rounds", "2"] if recipe != "fedstats" else []
    out = subprocess.run(
        [
            sys.executable,
            str(job_py),
            "--export-only",
            "--n-clients",
            "3",
            "--min-clients",
            "2",
            *rounds,
            "--profile",
            "production",
            "--job-root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (job,) = tmp_path.iterdir()
    assert out.stdout.strip().endswith(job.name)
    config = yaml.safe_load((job / "job.yaml").read_text())
    assert (
        len(config["clients"]) == 3
        and config["min_clients"] == 2
        and config["settings_profile"] == "production"
    )
    assert not (job / "status.json").exists()  # exported, not run
