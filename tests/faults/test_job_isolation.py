"""Jobs cannot touch each other's files, and settings that would disable a deadline are refused before any
rank starts (ConfigError naming the key at recipe construction or export)."""

from __future__ import annotations

import math
import os

import pytest

from hpcflare.errors import ConfigError
from hpcflare.exitcodes import ExitCode
from hpcflare.recipe import FedAvgRecipe
from tests.conftest import SLOW, events


@pytest.mark.parametrize(
    "key, value",
    [
        ("round_timeout", math.nan),
        ("heartbeat_timeout", math.inf),
        ("rpc_timeout", 0),
        ("stream_timeout", -5),
        ("registration_timeout", "60"),
        ("chunk_size", 1.5),
        ("server_threads", True),
    ],
)
def test_settings_that_would_disable_a_deadline_are_refused_at_construction(make_recipe, key, value):
    with pytest.raises(ConfigError, match=f"settings.{key}"):
        make_recipe(SLOW, n_clients=2, settings={key: value})


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"num_rounds": 2.5}, "num_rounds"),
        ({"num_rounds": "3"}, "num_rounds"),
        ({"min_clients": True}, "min_clients"),
        ({"num_rounds": 0}, "num_rounds"),
        ({"min_fraction": math.nan}, "min_fraction"),
        ({"relays": 0.5}, "relays"),
    ],
)
def test_bad_numbers_are_refused_at_construction(make_recipe, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        make_recipe(SLOW, n_clients=2, **kwargs)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x" * 101])
def test_job_names_that_are_not_a_directory_name_are_refused(name):
    with pytest.raises(ConfigError, match="job name"):
        FedAvgRecipe(name=name, model={"w": [1.0]}, min_clients=1, num_rounds=1, train_script=__file__)


@pytest.mark.parametrize("staging_dir", [".", "models", "logs/x", "../other", "app"])
def test_staging_dir_inside_the_jobs_own_folders_is_refused_at_export(make_recipe, tmp_path, staging_dir):
    recipe = make_recipe(SLOW, n_clients=2, staging=True, staging_dir=staging_dir)
    with pytest.raises(ConfigError, match="staging_dir"):
        recipe.export(tmp_path / "jobs")


def test_shared_staging_dir_is_scoped_by_job_and_cannot_be_the_jobs_root(make_recipe, tmp_path):
    shared = tmp_path / "lustre" / "staging"
    job = make_recipe(SLOW, n_clients=2, staging=True, staging_dir=str(shared)).export(tmp_path / "jobs")
    config = job.load_config()
    assert config.staging_root(job.root) == shared / config.job_id
    with pytest.raises(ConfigError, match="staging_dir"):  # <jobs>/<job_id> is the job dir itself
        make_recipe(SLOW, n_clients=2, staging=True, staging_dir=str(tmp_path / "jobs")).export(
            tmp_path / "jobs"
        )


def test_app_symlinked_out_of_the_job_is_refused_before_any_script_runs(make_recipe, local_env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "client.py").write_text("open('PWNED', 'w').write('x')\n")
    job = make_recipe("print('never')\n", n_clients=2).export(local_env.job_root)
    for f in job.app_dir.iterdir():
        f.unlink()
    job.app_dir.rmdir()
    os.symlink(outside, job.app_dir)
    run = local_env.deploy(job)
    assert run.wait(60)
    assert not any(outside.rglob("PWNED")) and not any(job.root.rglob("PWNED"))
    assert run.exit_codes["site-1"] == ExitCode.CONFIG_ERROR
    assert any("symlink out of the job directory" in e["msg"] for e in events(job.root, "site-1"))
