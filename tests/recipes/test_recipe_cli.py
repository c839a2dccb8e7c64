"""Every recipes/*/job.py takes the same flags (hpcflare.recipe.job_cli) and they do what they say."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from hpcflare.recipe.job_cli import UNIFORM_FLAGS
from tests.conftest import REPO

RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/job.py"))
DECIDES_ROUNDS = ("fedstats", "psi", "xgboost", "xgboost-vertical")
"""Recipes whose job rounds follow from the algorithm (xgboost: its default histogram mode)."""
EVERY_SITE = ("splitnn",)
"""Recipes that need every site in every round (split learning: each site holds columns the others lack)."""


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
    rounds = ["--rounds", "2"] if recipe not in DECIDES_ROUNDS else []
    min_clients = "3" if recipe in EVERY_SITE else "2"
    out = subprocess.run(
        [
            sys.executable,
            str(job_py),
            "--export-only",
            "--n-clients",
            "3",
            "--min-clients",
            min_clients,
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
        and config["min_clients"] == int(min_clients)
        and config["settings_profile"] == "production"
    )
    assert not (job / "status.json").exists()  # exported, not run


def _job_py(recipe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    job_py = REPO / "recipes" / recipe / "job.py"
    return subprocess.run(
        [sys.executable, str(job_py), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("recipe", ["psi", "xgboost", "xgboost-vertical"])
def test_rounds_a_recipe_decides_itself_are_refused_in_one_line(recipe, tmp_path):
    out = _job_py(recipe, "--rounds", "5", "--export-only", "--job-root", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--rounds is not used here" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing exported, nothing run


@pytest.mark.parametrize(
    ("recipe", "privacy"), [("swarm-torch", "secagg"), ("scaffold-torch", "he"), ("fedopt-torch", "he")]
)
def test_privacy_is_offered_only_where_the_strategy_can_honour_it(recipe, privacy, tmp_path):
    out = _job_py(recipe, "--privacy", privacy, "--export-only", "--job-root", str(tmp_path))
    assert out.returncode == 2 and "--privacy" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("env", ["local", "sim"])
def test_fedavg_torch_with_he_gets_tensors_and_prints_the_decrypted_result(env, tmp_path):
    pytest.importorskip("tenseal")
    out = _job_py(
        "fedavg-torch",
        *("--privacy", "he", "--rounds", "2", "--n-clients", "2", "--env", env, "--job-root", str(tmp_path)),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "is CKKS ciphertext; decrypted with site-1's key" in out.stdout
    accuracy = float(out.stdout.strip().rsplit("test accuracy", 1)[1])
    assert accuracy > 0.3  # a trained model (10 classes: chance is 0.1), not ciphertext read as weights
