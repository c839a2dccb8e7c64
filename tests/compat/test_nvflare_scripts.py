"""NVFlare client scripts, unmodified (zero-change mode) and with only their imports changed, in LocalEnv and
SimEnv: exact results, NVFlare's round numbering and metrics semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcflare.recipe import add_cross_site_evaluation
from tests.compat.conftest import ENVS, VARIANTS, round_metrics
from tests.conftest import events, load_result

INITIAL = np.arange(9, dtype=np.float32).reshape(3, 3)
both = pytest.mark.parametrize("variant", VARIANTS)
envs = pytest.mark.parametrize("env_kind", ENVS)


@both
@envs
def test_hello_numpy_rounds_count_from_zero_and_bring_last_rounds_metrics(job, env_kind, variant):
    run = job("hello_np.py", env_kind, variant, num_rounds=3)
    np.testing.assert_array_equal(load_result(run.result)["numpy_key"], INITIAL + 3)
    m = round_metrics(run)
    for r in (1, 2, 3):  # hpcflare's files count rounds from 1; the script saw current_round = r - 1
        assert m[(r, "site-1", "round_seen")] == m[(r, "site-2", "round_seen")] == r - 1
        assert m[(r, "site-1", "mean")] == 4.0 + r
        # the received FLModel.metrics: the previous round's aggregate, none in the first round
        assert m[(r, "site-2", "prev_mean")] == (-1.0 if r == 1 else 4.0 + r - 1)
    assert m[(1, "global", "site_no")] == pytest.approx(
        5 / 3
    )  # weighted by NUM_STEPS_CURRENT_ROUND (1 and 2)


@both
@envs
def test_decorators_attach_evaluate_metrics_to_the_training_result(job, env_kind, variant):
    run = job("decorated.py", env_kind, variant, num_rounds=3)
    np.testing.assert_array_equal(load_result(run.result)["numpy_key"], INITIAL + 6)
    m = round_metrics(run)
    # a bare number from @flare.evaluate is recorded as 'accuracy' (NVFlare's default key metric)
    assert [m[(r, "site-1", "accuracy")] for r in (1, 2, 3)] == [36.0, 54.0, 72.0]


@both
@envs
def test_diff_updates_are_averaged_as_differences(job, env_kind, variant):
    run = job("diff_update.py", env_kind, variant, num_rounds=2)
    np.testing.assert_array_equal(load_result(run.result)["numpy_key"], INITIAL + 4)  # mean diff (1 + 3) / 2


@both
@envs
def test_params_transfer_type_diff_sends_the_difference_of_full_weights(job, env_kind, variant):
    run = job("full_as_diff.py", env_kind, variant, num_rounds=2, params_transfer_type="DIFF")
    np.testing.assert_array_equal(load_result(run.result)["numpy_key"], INITIAL + 4)
    sent = [e for e in events(run.job_dir.root, "site-1") if e["event"] == "result_sent"]
    assert len(sent) == 2 and all("(DIFF)" in e["msg"] for e in sent)


@both
@envs
def test_cross_site_evaluation_with_metrics_only_results(job, env_kind, variant, tmp_path):
    from hpcflare.recipe import FedAvgRecipe

    original = FedAvgRecipe.execute

    def with_cross_site(self, env):
        add_cross_site_evaluation(self)
        return original(self, env)

    FedAvgRecipe.execute = with_cross_site
    try:
        run = job("cross_site.py", env_kind, variant, num_rounds=1)
    finally:
        FedAvgRecipe.execute = original
    matrix = json.loads((run.job_dir.root / "cross_site" / "matrix.json").read_text())
    assert matrix["site-1"]["site-2"]["score"] == 36.0 + 9
    assert matrix["site-2"]["site-1"]["score"] == 36.0 + 18
    assert matrix["global"]["site-1"]["score"] == 36.0 + 13.5


@both
@envs
def test_script_launched_once_per_round(job, env_kind, variant):
    run = job("once_per_round.py", env_kind, variant, num_rounds=3, launch_once=False)
    np.testing.assert_array_equal(load_result(run.result)["numpy_key"], INITIAL + 3)
    starts = [e for e in events(run.job_dir.root, "site-2") if e["event"] == "script_started"]
    assert len(starts) == 3  # a fresh run of the script for every round
    m = round_metrics(run)
    assert [m[(r, "site-2", "round_seen")] for r in (1, 2, 3)] == [0.0, 1.0, 2.0]


@both
@envs
def test_lightning_trainer_trains_federatedly(job, env_kind, variant):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_lightning")
    torch.manual_seed(1)
    initial = torch.nn.Linear(3, 1)
    model = {"lin.weight": initial.weight.detach().clone(), "lin.bias": initial.bias.detach().clone()}
    run = job(
        "lightning_fit.py",
        env_kind,
        variant,
        num_rounds=3,
        initial_model=model,
        timeout=300,
        settings={"round_timeout": 120, "heartbeat_timeout": 20},
    )
    m = round_metrics(run)
    losses = [m[(r, "global", "val_loss")] for r in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2]  # each round validates the model the previous rounds trained
    result = load_result(run.result)
    assert set(result) == {"lin.weight", "lin.bias"}
    assert not np.allclose(result["lin.weight"], model["lin.weight"].numpy())
    from tests.compat.conftest import step_rows

    seen = sorted(
        float(r["value"]) for r in step_rows(run) if r["key"] == "round_seen" and r["site"] == "site-1"
    )
    assert seen == [0.0, 1.0, 2.0]


@both
@envs
def test_api_surface_context_and_shutdown(job, env_kind, variant):
    from tests.compat.conftest import step_rows

    run = job("api_surface.py", env_kind, variant, num_rounds=2)
    np.testing.assert_array_equal(load_result(run.result)["numpy_key"], INITIAL + 2)
    seen = sorted((r["site"], r["round"], r["value"]) for r in step_rows(run) if r["key"] == "seen_round")
    assert seen == [
        ("site-1", "1", "0.0"),
        ("site-1", "2", "1.0"),
        ("site-2", "1", "0.0"),
        ("site-2", "2", "1.0"),
    ]


def test_sim_env_returns_the_servers_reason_when_the_server_dies(tmp_path):
    """A server that gives up (here: nobody registers) ends get_result() with its reason, even while client
    threads are still stuck in a script that never reaches flare.init()."""
    from hpcflare.env import SimEnv
    from hpcflare.errors import JobFailedError
    from hpcflare.recipe import FedAvgRecipe
    from tests.conftest import FAST

    script = tmp_path / "client.py"
    script.write_text("import time\ntime.sleep(120)\n")
    run = FedAvgRecipe(
        initial_model=[1.0], min_clients=2, train_script=script, settings={**FAST, "registration_timeout": 2}
    ).execute(SimEnv(job_root=tmp_path / "jobs", verbose=False))
    with pytest.raises(JobFailedError, match="registration_timeout"):
        run.get_result(timeout=60)
