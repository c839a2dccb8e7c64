"""`hpcflare logs plot`: each training metric by round, drawn from a real job's tracking files."""

from __future__ import annotations

import pytest

from hpcflare.cli import main

SCRIPT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params=model.params, metrics={"loss": 1.0 / model.current_round if model.current_round else 1.0, "accuracy": 0.5}))
"""


def test_plot_draws_a_png_of_every_metric(make_recipe, local_env, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from hpcflare.logs.plot import read_metrics

    run = make_recipe(SCRIPT, n_clients=2, num_rounds=3).execute(local_env)
    run.get_result(timeout=180)
    metrics = read_metrics(run.job_dir)
    assert set(metrics) == {"loss", "accuracy"}
    assert set(metrics["loss"]) == {"site-1", "site-2", "global"} and len(metrics["loss"]["global"]) == 3
    out = tmp_path / "metrics.png"
    assert main(["logs", "plot", str(run.job_dir.root), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "metrics plot written" in capsys.readouterr().out


def test_plot_of_a_folder_that_is_no_job_says_so(tmp_path, capsys):
    assert main(["logs", "plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err
    assert "metrics.csv not found" in err and "Traceback" not in err


def test_diagnose_is_a_short_alias(make_recipe, local_env, capsys):
    run = make_recipe(SCRIPT, n_clients=2, num_rounds=1).execute(local_env)
    run.get_result(timeout=180)
    assert main(["diagnose", str(run.job_dir.root)]) == 0
    short = capsys.readouterr().out
    assert main(["logs", "diagnose", str(run.job_dir.root)]) == 0
    assert capsys.readouterr().out == short and "completed" in short
