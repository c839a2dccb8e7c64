"""recipes/hello-pt: NVFlare's hello-pt, client script unchanged, job ported by renaming imports."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "hello-pt"


@pytest.mark.parametrize("env", ["sim", "local"])
def test_hello_pt_learns_with_the_unchanged_nvflare_client(tmp_path, env):
    pytest.importorskip("torch")
    assert "import nvflare.client as flare" in (RECIPE / "client.py").read_text()
    out = subprocess.run(
        [
            sys.executable,
            str(RECIPE / "job.py"),
            "--num_rounds",
            "4",
            "--env",
            env,
            "--job_root",
            str(tmp_path / "jobs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Job Status is: completed" in out.stdout
    (job,) = (tmp_path / "jobs").iterdir()
    rows = [r for r in csv.DictReader(open(job / "tracking" / "metrics.csv")) if r["site"] == "global"]
    accuracy = {int(r["round"]): float(r["value"]) for r in rows if r["key"] == "accuracy"}
    assert sorted(accuracy) == [1, 2, 3, 4]
    assert accuracy[4] > 0.5 > accuracy[1]  # chance is 0.1: the federated model learned
    assert (
        job / "tracking" / "tensorboard" / "site-1"
    ).is_dir()  # add_experiment_tracking(recipe, "tensorboard")
    assert (job / "models" / "best_model.safetensors").is_file()
