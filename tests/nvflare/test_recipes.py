"""NVFlare's recipe classes, keywords and helpers, as the hpcflare job each one exports."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from hpcflare.env import SimEnv
from hpcflare.errors import ConfigError
from hpcflare.nvflare import recipes as nv
from hpcflare.nvflare.fed_job import FedAvg, FedJob, ScriptRunner
from hpcflare.nvflare.local_files import local_imports
from hpcflare.nvflare.utils import add_experiment_tracking, set_per_site_config
from hpcflare.recipe import nvflare_keywords


@pytest.fixture
def script(tmp_path):
    (tmp_path / "net.py").write_text("import helpers\n")
    (tmp_path / "helpers.py").write_text("import os\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("")
    path = tmp_path / "client.py"
    path.write_text(
        "import nvflare.client as flare\nfrom net import Net\nimport data.loaders\nimport numpy\n"
    )
    return path


def exported(recipe, tmp_path):
    job = recipe.export(tmp_path / "jobs")
    return yaml.safe_load(job.config_path.read_text()), job


def test_local_modules_travel_with_the_script(script, tmp_path):
    found = local_imports(script)
    assert [p.name for p in found] == ["data", "net.py", "helpers.py"]  # helpers through net; never numpy
    _, job = exported(nv.NumpyFedAvgRecipe(min_clients=1, model=[1.0], train_script=script), tmp_path)
    assert sorted(p.name for p in job.app_dir.iterdir()) == ["client.py", "data", "helpers.py", "net.py"]


def test_nvflare_defaults_and_model_config(script, tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(
        "import numpy as np\nclass Net:\n    def __init__(self, n):\n        self.n = n\n"
        "    def state_dict(self):\n        return {'w': np.ones(self.n, np.float32)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = nv.FedAvgRecipe(
        min_clients=2, model={"path": "mymodel.Net", "args": {"n": 3}}, train_script=script
    )
    config, job = exported(recipe, tmp_path)
    assert config["name"] == "fedavg" and config["num_rounds"] == 2 and config["key_metric"] == "accuracy"
    import safetensors.numpy

    assert safetensors.numpy.load_file(str(job.models_dir / "initial_model.safetensors"))["w"].shape == (3,)
    with pytest.raises(ConfigError, match="cannot be imported"):
        nv.FedAvgRecipe(min_clients=1, model={"path": "mymodel.Nope"}, train_script=script)


def test_fedprox_and_fedopt_keywords(script, tmp_path):
    config, _ = exported(
        nv.FedProxRecipe(min_clients=1, model=[0.0], train_script=script, fedprox_mu=0.5), tmp_path
    )
    assert config["strategy"] == "fedavg" and config["strategy_args"]["fedprox_mu"] == 0.5
    config, _ = exported(nv.FedOptRecipe(min_clients=1, initial_model=[0.0], train_script=script), tmp_path)
    assert config["strategy_args"]["optimizer"] == "sgd" and config["strategy_args"]["momentum"] == 0.6
    assert config["params_transfer_type"] == "DIFF"
    config, _ = exported(
        nv.FedOptRecipe(
            min_clients=1,
            initial_model=[0.0],
            train_script=script,
            optimizer_args={"path": "torch.optim.Adam", "args": {"lr": 0.01, "betas": (0.8, 0.9)}},
        ),
        tmp_path,
    )
    assert config["strategy_args"] | {"tau": 0} == {
        "optimizer": "adam",
        "lr": 0.01,
        "momentum": 0.9,
        "beta1": 0.8,
        "beta2": 0.9,
        "tau": 0,
    }
    with pytest.raises(ConfigError, match="lr_scheduler_args"):
        nv.FedOptRecipe(
            min_clients=1, initial_model=[0.0], train_script=script, lr_scheduler_args={"path": "x"}
        )
    with pytest.raises(ConfigError, match="has SGD"):
        nv.FedOptRecipe(
            min_clients=1, initial_model=[0.0], train_script=script, optimizer_args={"path": "x.RMSprop"}
        )


def test_keywords_without_effect_are_named_once_and_results_changing_ones_refused(script, capsys):
    nvflare_keywords._noted.clear()
    for _ in range(2):
        nv.FedAvgRecipe(
            min_clients=1,
            model=[0.0],
            train_script=script,
            cuda_empty_cache=True,
            server_memory_gc_rounds=0,  # NVFlare's default: nothing to say
            aggregator_data_kind="WEIGHT_DIFF",
        )
    err = capsys.readouterr().err
    assert err.count("NVFlare keyword cuda_empty_cache: True accepted; no effect here") == 1
    assert "server_memory_gc_rounds" not in err
    for keyword in ("aggregator", "model_persistor", "model_locator"):
        with pytest.raises(ConfigError, match=f"{keyword}=object"):
            nv.FedAvgRecipe(min_clients=1, model=[0.0], train_script=script, **{keyword: object()})
    with pytest.raises(ConfigError, match="aggregator_data_kind"):
        nv.FedAvgRecipe(min_clients=1, model=[0.0], train_script=script, aggregator_data_kind="METRICS")


def test_tracking_helpers_take_nvflares_shapes(script, tmp_path):
    recipe = nv.FedAvgRecipe(min_clients=2, model=[0.0], train_script=script)
    add_experiment_tracking(
        recipe,
        "mlflow",
        {"tracking_uri": "sqlite:////tmp/m.db", "kw_args": {"experiment_name": "e", "run_tags": {"a": 1}}},
        client_side=True,
    )
    add_experiment_tracking(recipe, "wandb", {"mode": "offline", "wandb_args": {"project": "p", "name": "n"}})
    add_experiment_tracking(recipe, "tensorboard", {"tb_folder": "tb", "events": ["fed.analytix_log_stats"]})
    set_per_site_config(recipe, {"a": {"train_args": "--x 1"}, "b": {}})
    config, _ = exported(recipe, tmp_path)
    assert config["tracking_config"] == {
        "mlflow": {"tracking_uri": "sqlite:////tmp/m.db", "experiment_name": "e", "tags": {"a": 1}},
        "wandb": {"mode": "offline", "project": "p"},
        "tensorboard": {"tb_folder": "tb"},
    }
    assert config["clients"] == ["a", "b"] and config["site_train_args"] == {"a": ["--x", "1"]}
    with pytest.raises(ConfigError, match="at least one of server_side or client_side"):
        add_experiment_tracking(recipe, "mlflow", server_side=False)


def test_fedjob_refuses_what_it_cannot_run(script):
    job = FedJob(name="j")
    with pytest.raises(ConfigError, match="sites take a ScriptRunner"):
        job.to(object(), "site-1")
    with pytest.raises(ConfigError, match="the server takes the FedAvg controller"):
        job.to_server(object())
    with pytest.raises(ConfigError, match="no controller"):
        job.recipe(2)
    job.to_server(FedAvg(num_clients=2, num_rounds=1))
    with pytest.raises(ConfigError, match="no initial model"):
        job.recipe(2)
    job.to_server({"w": np.zeros(2)})
    job.to(ScriptRunner(script=str(script)), "site-1")
    job.to(ScriptRunner(script=str(script.parent / "net.py")), "site-2")
    with pytest.raises(ConfigError, match="different scripts"):
        job.recipe()


def test_sim_env_runs_lightning_scripts_in_processes(tmp_path):
    lightning = tmp_path / "lit.py"
    lightning.write_text("import lightning as L\nimport nvflare.client.lightning as flare\n")
    plain = tmp_path / "plain.py"
    plain.write_text("import nvflare.client as flare\n")
    env = SimEnv(job_root=tmp_path / "jobs")
    for path, expected in ((lightning, True), (plain, False)):
        job = nv.FedAvgRecipe(min_clients=1, model=[0.0], train_script=path).export(tmp_path / "jobs")
        assert env.wants_processes(job) is expected
    assert SimEnv(job_root=tmp_path, processes=True).wants_processes(job) is True
    with pytest.raises(ConfigError, match="processes="):
        SimEnv(processes="sometimes")


def test_nvflare_export_and_execute_signatures(script, tmp_path, capsys):
    recipe = nv.NumpyFedAvgRecipe(name="np-job", min_clients=1, model=[1.0], train_script=script)
    job = recipe.export(job_dir=tmp_path / "exported", server_exec_params={"x": 1})
    assert job.root == (tmp_path / "exported" / "np-job").resolve() and job.config_path.is_file()
    assert "server_exec_params/client_exec_params" in capsys.readouterr().err
    again = recipe.export(tmp_path / "positional")  # NVFlare's positional job_dir
    assert again.root.name == "np-job"


def test_fedeval_takes_nvflares_eval_keywords_and_client_files(script, tmp_path):
    import safetensors.numpy

    checkpoint = tmp_path / "trained.safetensors"
    safetensors.numpy.save_file({"numpy_key": np.full(2, 7.0, np.float32)}, str(checkpoint))
    extra = tmp_path / "labels.txt"
    extra.write_text("a\nb\n")
    recipe = nv.FedEvalRecipe(
        min_clients=1, model=[0.0, 0.0], eval_script=script, eval_args="--split test", eval_ckpt=checkpoint
    )
    recipe.add_client_file(extra)
    config, job = exported(recipe, tmp_path)
    assert config["strategy"] == "fedeval" and config["num_rounds"] == 1
    assert config["train_script"] == "app/client.py" and config["train_args"] == ["--split", "test"]
    initial = safetensors.numpy.load_file(str(job.models_dir / "initial_model.safetensors"))
    assert initial["numpy_key"].tolist() == [7.0, 7.0] and (job.app_dir / "labels.txt").is_file()
