"""recipes/splitnn end to end: PSI aligns the rows, the split model trains across real site processes, and the
result matches the same model trained centrally on the joined table; a site that dies fails the round naming it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, REPO, events, wait_until

torch = pytest.importorskip("torch")
RECIPE = REPO / "recipes" / "splitnn"


def _model_module():
    """recipes/splitnn/model.py under a name of its own (other recipes' tests import their own 'model')."""
    spec = importlib.util.spec_from_file_location("splitnn_model", RECIPE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _aligned_columns(psi_job: Path, n_sites: int, rows: int):
    from hpcflare.tabular.data import align_rows, vertical_site

    columns, labels = {}, None
    for n in range(n_sites):
        site = f"site-{n + 1}"
        ids, x, y = vertical_site(n, n_sites, rows)
        x, y = align_rows(site, ids, x, y, psi_job / "sites" / site / "psi_intersection.txt")
        columns[site], labels = x, (y if y is not None else labels)
    return columns, labels


def test_split_training_matches_central_training_on_the_joined_table(tmp_path):
    root = tmp_path / "jobs"
    out = subprocess.run(
        [sys.executable, str(RECIPE / "job.py"), "--env", "local", "--rounds", "5", "--job-root", str(root)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (psi_job,) = root.glob("psi-*")
    (job,) = root.glob("splitnn-*")
    rounds = [e for e in events(job, "server") if e["event"] == "round_completed"]
    losses = [e["metrics"]["site-1"]["train_loss"] for e in rounds]
    assert len(losses) == 5 and losses[-1] < losses[0]  # training loss falls
    split_accuracy = rounds[-1]["metrics"]["site-1"]["val_accuracy"]
    model = _model_module()
    columns, labels = _aligned_columns(psi_job, 2, 4000)
    parts = model.initial_parts({s: c.shape[1] for s, c in columns.items()}, "site-1", 8)
    central = model.central(columns, labels, parts, "site-1", 8, 5, 64, 0.3, 0.2)
    assert central > 0.65  # the task is learned, not a coin flip
    assert abs(split_accuracy - central) <= 0.02, (split_accuracy, central)
    import safetensors.numpy

    result = safetensors.numpy.load_file(str(job / "models" / "global_model.safetensors"))
    assert {name.split("/")[0] for name in result} == {"site-1", "site-2"}
    assert set(result) == set(parts)  # every site's part of the trained model, and nothing else


def test_a_site_that_dies_fails_the_round_naming_it(tmp_path):
    from hpcflare.env import LocalEnv
    from hpcflare.errors import JobFailedError
    from hpcflare.recipe import SplitNNRecipe
    from hpcflare.tabular.data import vertical_site

    n_sites, rows = 3, 20_000
    psi_job = tmp_path / "psi"  # what a PSI job leaves: each site's sorted intersection
    tables = [vertical_site(n, n_sites, rows) for n in range(n_sites)]
    common = sorted(set.intersection(*(set(t[0]) for t in tables)))
    for n in range(n_sites):
        (psi_job / "sites" / f"site-{n + 1}").mkdir(parents=True)
        (psi_job / "sites" / f"site-{n + 1}" / "psi_intersection.txt").write_text("\n".join(common))
    model = _model_module()
    widths = {f"site-{n + 1}": t[1].shape[1] for n, t in enumerate(tables)}
    recipe = SplitNNRecipe(
        name="split-death",
        model=model.initial_parts(widths, "site-1", 8),
        label_owner="site-1",
        n_clients=n_sites,
        min_clients=n_sites,
        num_rounds=30,
        train_script=RECIPE / "client.py",
        train_args=["--psi-job", str(psi_job), "--n-sites", "3", "--rows", str(rows), "--batch-size", "16"],
        extra_files=[RECIPE / "model.py"],
        settings=FAST,
        clients_per_rank=1,
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", verbose=False))
    wait_until(
        lambda: any(e["event"] == "round_completed" for e in events(run.job_dir.root, "server")),
        "round 1 completed",
        timeout=300,
    )
    os.kill(run.client_pid("site-3"), signal.SIGKILL)
    with pytest.raises(JobFailedError) as failed:
        run.get_result(timeout=300)
    assert "site-3" in str(failed.value)
    status = run.job_dir.read_status()
    assert status["state"] == "failed"
    gone = [e for e in events(run.job_dir.root, "site-1") if "site-3 is gone" in e.get("msg", "")]
    assert gone or "site-3" in status.get("reason", ""), status
