"""NVFlare's recipe keywords: accepted with their meaning, or refused with the hpcflare equivalent."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from hpcflare.env import PocEnv, SimEnv
from hpcflare.errors import ConfigError
from hpcflare.recipe import FedAvgRecipe, add_cross_site_evaluation, add_experiment_tracking


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "client.py"
    path.write_text("import nvflare.client as flare\n")
    return path


def exported(recipe, tmp_path):
    job = recipe.export(tmp_path / "jobs")
    return yaml.safe_load(job.config_path.read_text()), job


def test_defaults_and_array_model_match_nvflare(script, tmp_path):
    config, job = exported(
        FedAvgRecipe(initial_model=[[1, 2], [3, 4]], min_clients=2, train_script=script), tmp_path
    )
    assert config["name"] == "fedavg" and config["num_rounds"] == 2
    import safetensors.numpy

    initial = safetensors.numpy.load_file(str(job.models_dir / "initial_model.safetensors"))
    assert initial["numpy_key"].dtype == np.float32 and initial["numpy_key"].tolist() == [[1, 2], [3, 4]]


def test_model_and_initial_model_together_is_refused_at_construction(script):
    with pytest.raises(ConfigError, match="initial_model= and model= name the same thing"):
        FedAvgRecipe(
            model={"w": np.zeros(2)}, initial_model={"w": np.zeros(2)}, min_clients=1, train_script=script
        )


def test_keywords_map_to_hpcflare_settings(script, tmp_path):
    recipe = FedAvgRecipe(
        initial_model={"w": np.zeros(2), "bn.var": np.ones(2)},
        min_clients=2,
        train_script=script,
        stop_cond="accuracy >= 0.8",
        patience=3,
        exclude_vars="bn\\.",
        launch_once=False,
        aggregation_weights={"a": 2.0},
        params_transfer_type="DIFF",
        launch_external_process=True,
        command="python3 -u",
        server_expected_format="numpy",
        per_site_config={"a": {"train_args": "--lr 0.1"}, "b": {}},
    )
    config, _ = exported(recipe, tmp_path)
    assert config["clients"] == ["a", "b"] and config["site_train_args"] == {"a": ["--lr", "0.1"]}
    assert config["stop_condition"] == "accuracy >= 0.8" and config["early_stop_patience"] == 3
    assert config["key_metric"] == "accuracy" and config["launch_once"] is False
    assert config["filters"] == [{"type": "exclude", "regex": "bn\\."}]
    assert config["strategy_args"] == {"aggregation_weights": {"a": 2.0}}
    assert config["params_transfer_type"] == "DIFF"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"command": "torchrun --nproc_per_node 2"}, "launcher command"),
        ({"server_expected_format": "tensorflow"}, "server_expected_format"),
        ({"per_site_config": {"site-1": {"train_script": "other.py"}}}, "one\ntrain_script|train_script"),
        ({"stop_cond": "accuracy is high"}, "must read '<metric> <op> <number>'"),
        ({"initial_model": "model.pt"}, "initial_ckpt"),
    ],
)
def test_keywords_without_an_equivalent_are_refused_by_name(script, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FedAvgRecipe(
            **{"initial_model": {"w": np.zeros(2)}, **kwargs}, min_clients=1, train_script=script
        ).export(tmp_path / "jobs")


def test_env_chooses_the_sites_like_nvflare(script, tmp_path):
    recipe = FedAvgRecipe(initial_model={"w": np.zeros(2)}, min_clients=2, train_script=script)
    env = SimEnv(num_clients=3, workspace_root=tmp_path / "ws")
    assert env.sites == ["site-1", "site-2", "site-3"] and env.job_root == tmp_path / "ws"
    with pytest.warns(UserWarning, match="LocalEnv"):
        poc = PocEnv(clients=["x", "y"], workspace_root=tmp_path / "poc")
    assert poc.sites == ["x", "y"]
    with pytest.raises(ConfigError, match="runs 1 client"):
        recipe.execute(SimEnv(num_clients=1, job_root=tmp_path / "j"))


def test_tracking_and_cross_site_helpers(script, tmp_path):
    recipe = FedAvgRecipe(initial_model={"w": np.zeros(2)}, min_clients=2, train_script=script, num_rounds=3)
    add_experiment_tracking(recipe, "tensorboard")
    add_experiment_tracking(recipe, "mlflow", {"tracking_uri": "sqlite:////tmp/x.db"})
    add_cross_site_evaluation(recipe)
    config, _ = exported(recipe, tmp_path)
    assert config["tracking"] == ["csv", "tensorboard", "mlflow"]
    assert config["tracking_config"] == {"mlflow": {"tracking_uri": "sqlite:////tmp/x.db"}}
    assert config["strategy"] == "cross_site_eval"
    assert config["strategy_args"] == {"train_rounds": 3, "submit_models": True}
    assert config["num_rounds"] == 3 + 1 + 2 + 1
    with pytest.raises(ConfigError, match="tracking_type"):
        add_experiment_tracking(recipe, "neptune")
