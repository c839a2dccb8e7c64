"""NVFlare job.py files, in the shapes NVFlare's examples use, run unchanged through ``hpcflare nvflare``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import load_result

APPS = Path(__file__).parent / "apps"
INITIAL = np.arange(1, 10, dtype=np.float32).reshape(3, 3)


def nvflare(
    tmp_path: Path, job: str, *args: str, cli: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Copy the app folder and run ``job`` from it, as a user runs ``python job.py`` in an example's folder."""
    app = tmp_path / "app"
    if not app.exists():
        shutil.copytree(APPS, app)
    command = ["-m", "hpcflare.cli", "nvflare"] if cli else ["-m", "hpcflare.nvflare"]
    return subprocess.run(
        [sys.executable, *command, job, *args], cwd=app, capture_output=True, text=True, timeout=timeout
    )


def workspace_of(out: str) -> Path:
    (line,) = [line for line in out.splitlines() if line.startswith("Result can be found in :")]
    return Path(line.split(":", 1)[1].strip())


@pytest.mark.parametrize("env_kind", ["sim", "poc"])
def test_a_recipe_job_runs_unchanged_with_tracking_and_nvflares_run(tmp_path, env_kind):
    done = nvflare(tmp_path, "job_recipe.py", env_kind, str(tmp_path / "ws"), cli=env_kind == "poc")
    assert done.returncode == 0, done.stderr[-3000:]
    workspace = workspace_of(done.stdout)  # NVFlare's Run.get_result(): the result workspace
    assert workspace.parent == tmp_path / "ws" and "Job Status is: completed" in done.stdout
    result = load_result(workspace / "models" / "global_model.safetensors")["numpy_key"]
    np.testing.assert_array_equal(result, INITIAL + 3)  # three rounds of +1
    assert (workspace / "tracking" / "tb_events" / "site-2").is_dir()  # tracking_config tb_folder
    # the site's local module travelled with its script; NVFlare's no-effect keywords are named once
    assert (workspace / "app" / "helpers.py").is_file()
    assert done.stderr.count("NVFlare keyword client_memory_gc_rounds") == 1
    assert "NVFlare keyword server_memory_gc_rounds: 1 accepted; no effect here" in done.stderr
    if env_kind == "sim":  # NVFlare's simulator gives every site a process: so does this SimEnv
        assert (workspace / "logs" / "site-1.out").read_text().count("round 2 fedprox_mu=None nr=2") == 1
        assert "log_config" in done.stderr


def test_a_fedjob_with_script_runners_per_site_exports_and_simulates(tmp_path):
    done = nvflare(tmp_path, "job_fedjob.py", str(tmp_path / "work"), str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr[-3000:]
    exported = tmp_path / "export" / "fedjob"
    assert (exported / "job.yaml").is_file() and (exported / "app" / "client.py").is_file()
    (workspace,) = (tmp_path / "work").iterdir()
    result = load_result(workspace / "models" / "global_model.safetensors")["numpy_key"]
    np.testing.assert_array_equal(result, np.full((2, 2), 4.0))  # two rounds of the mean of +1 and +3
    config = yaml.safe_load((workspace / "job.yaml").read_text())
    assert config["site_train_args"] == {"site-1": ["--add", "1.0"], "site-2": ["--add", "3.0"]}


def test_fedprox_mu_reaches_the_sites_and_cross_site_evaluation_asks_for_a_named_model(tmp_path):
    done = nvflare(tmp_path, "job_eval.py", str(tmp_path / "ws"), "cross_site")
    assert done.returncode == 0, done.stderr[-3000:]
    workspace = workspace_of(done.stdout)
    out = (workspace / "logs" / "site-1.out").read_text()
    assert "round 1 fedprox_mu=0.25" in out and "submit best_model" in out
    matrix = json.loads((workspace / "cross_site" / "matrix.json").read_text())
    assert sorted(matrix) == ["global", "site-1", "site-2"]
    assert matrix["global"]["site-2"]["accuracy"] == pytest.approx(2.0)  # two rounds of +1 from zeros
    nvflare_layout = json.loads((workspace / "cross_site_val" / "cross_val_results.json").read_text())
    assert nvflare_layout["site-2"]["SRV_FL_global_model.pt"] == matrix["global"]["site-2"]
    assert sorted(nvflare_layout["site-1"]) == ["SRV_FL_global_model.pt", "site-1", "site-2"]


def test_final_global_evaluation_scores_only_the_global_model(tmp_path):
    done = nvflare(tmp_path, "job_eval.py", str(tmp_path / "ws"), "global")
    assert done.returncode == 0, done.stderr[-3000:]
    workspace = workspace_of(done.stdout)
    matrix = json.loads((workspace / "cross_site" / "matrix.json").read_text())
    assert list(matrix) == ["global"] and set(matrix["global"]) == {"site-1", "site-2"}
    assert "submit" not in (workspace / "logs" / "site-1.out").read_text()


def test_names_not_served_and_components_that_cannot_run_fail_in_one_line(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APPS, app)
    (app / "unknown_module.py").write_text("from nvflare.app_opt.pt.recipes.fedsm import FedSMRecipe\n")
    (app / "unknown_name.py").write_text("from nvflare.recipe import SessionEnv\n")
    (app / "component.py").write_text(
        "from nvflare.app_common.np.recipes import NumpyFedAvgRecipe\n"
        "class MyAggregator: pass\n"
        "NumpyFedAvgRecipe(min_clients=1, model=[1.0], train_script='client.py', aggregator=MyAggregator())\n"
    )
    done = nvflare(tmp_path, "unknown_module.py")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "No module named 'nvflare.app_opt.pt.recipes.fedsm'" in done.stderr
    assert "'nvflare.app_opt.pt.recipes.fedprox'" in done.stderr  # what is served beside it
    done = nvflare(tmp_path, "unknown_name.py")
    assert done.returncode == 2 and "cannot import name 'SessionEnv'" in done.stderr
    assert "nvflare.recipe provides ['PocEnv', 'ProdEnv', 'Run', 'SimEnv'" in done.stderr
    done = nvflare(tmp_path, "component.py")
    assert done.returncode == 10 and "Traceback" not in done.stderr, done.stderr
    assert "aggregator=MyAggregator(...): NVFlare components do not run in hpcflare" in done.stderr
    done = nvflare(tmp_path, "missing.py")
    assert done.returncode == 2 and "not a Python file" in done.stderr


def test_a_job_the_script_does_not_wait_for_runs_to_its_end_and_sets_the_exit_status(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APPS, app)
    (app / "fire_and_forget.py").write_text(
        "import sys\n"
        "from nvflare.app_common.np.recipes import NumpyFedAvgRecipe\n"
        "from nvflare.recipe import PocEnv\n"
        "recipe = NumpyFedAvgRecipe(name='ff', min_clients=2, num_rounds=2, model=[1.0, 2.0],\n"
        "                           train_script=sys.argv[2], train_args='--add 1')\n"
        "recipe.execute(PocEnv(num_clients=2, poc_workspace=sys.argv[1]))  # NVFlare's POC: submit and return\n"
    )
    (app / "broken.py").write_text(
        "import nvflare.client as flare\nflare.init()\nraise RuntimeError('no data')\n"
    )
    done = nvflare(tmp_path, "fire_and_forget.py", str(tmp_path / "ok"), "client.py")
    assert done.returncode == 0, done.stderr[-3000:]
    (workspace,) = (tmp_path / "ok").iterdir()
    result = load_result(workspace / "models" / "global_model.safetensors")["numpy_key"]
    np.testing.assert_array_equal(result, np.array([3.0, 4.0], np.float32))
    done = nvflare(tmp_path, "fire_and_forget.py", str(tmp_path / "bad"), "broken.py")
    # the job's own verdict: the sites fail at start, before (REGISTRATION_TIMEOUT) or after (ROUND_FAILED)
    # the server counted them, as a loaded machine orders their start
    assert done.returncode in (11, 12), done.stderr[-3000:]
    assert "RuntimeError: no data" in done.stderr


def test_numpy_cross_site_evaluation_of_pretrained_models(tmp_path):
    """hello-numpy-cross-val: two server models and each site's own, scored by NVFlare's dummy NPValidator
    (sum(w / max(w)) + a random number in [0, 1)) at both sites; the matrix in NVFlare's layout."""
    server, client = tmp_path / "server_models", tmp_path / "client_models"
    server.mkdir()
    client.mkdir()
    np.save(server / "server_1.npy", INITIAL)
    np.save(server / "server_2.npy", INITIAL * 2)
    np.save(client / "best_numpy.npy", np.ones((3, 3), np.float32))
    done = nvflare(tmp_path, "job_cse.py", str(server), str(client), str(tmp_path / "ws"))
    assert done.returncode == 0, done.stderr[-3000:]
    workspace = workspace_of(done.stdout)
    results = json.loads((workspace / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(results) == ["site-1", "site-2"]
    base = {
        "server_model_1": INITIAL.sum() / 9,
        "server_model_2": INITIAL.sum() / 9,
        "site-1": 9,
        "site-2": 9,
    }
    for evaluator, row in results.items():
        assert sorted(row) == sorted(base), row  # no global model: nothing was trained
        for model, metrics in row.items():
            assert base[model] <= metrics["accuracy"] < base[model] + 1, (evaluator, model, metrics)
