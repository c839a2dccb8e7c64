"""FLModel validation matches NVFlare's documented behaviour."""

import numpy as np
import pytest

import hpcflare.client as flare
from hpcflare.client import FLModel, ParamsType


def test_params_without_type_default_to_full():
    model = FLModel(params={"w": np.zeros(2)})
    assert model.params_type is ParamsType.FULL


@pytest.mark.parametrize("ptype", [ParamsType.FULL, ParamsType.DIFF, "FULL", "DIFF"])
def test_full_or_diff_without_params_raises(ptype):
    with pytest.raises(ValueError, match="params must be provided"):
        FLModel(params_type=ptype)


def test_string_params_type_is_normalized_and_bad_one_rejected():
    assert FLModel(params={"w": 1}, params_type="DIFF").params_type is ParamsType.DIFF
    assert ParamsType.DIFF == "DIFF"
    with pytest.raises(ValueError, match="params_type must be one of"):
        FLModel(params={"w": 1}, params_type="HALF")


def test_constructor_signature_and_defaults_match_nvflare():
    model = FLModel(ParamsType.FULL, {"w": 1}, None, {"acc": 0.5}, 0, 2, 5, {"NUM_STEPS_CURRENT_ROUND": 10})
    assert (model.metrics, model.start_round, model.current_round, model.total_rounds) == (
        {"acc": 0.5},
        0,
        2,
        5,
    )
    assert model.meta[flare.FLMetaKey.NUM_STEPS_CURRENT_ROUND] == 10
    assert FLModel().meta == {} and FLModel().params_type is None


def test_api_before_init_is_a_clear_error():
    with pytest.raises(RuntimeError, match="call flare.init"):
        flare.receive()


def test_init_outside_a_job_explains_how_to_start(monkeypatch):
    monkeypatch.delenv("HPCFLARE_JOB_DIR", raising=False)
    monkeypatch.delenv("HPCFLARE_SITE_NAME", raising=False)
    with pytest.raises(RuntimeError, match="not running inside an hpcflare job"):
        flare.init()


def test_send_rejects_non_flmodel_before_anything_else():
    with pytest.raises(TypeError, match="expects an FLModel, got dict"):
        flare.send({"w": np.zeros(1)})


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"metrics": [1, 2]}, TypeError),
        ({"meta": "x"}, TypeError),
        ({"current_round": 1.5}, TypeError),
        ({"total_rounds": "3"}, TypeError),
        ({"current_round": -1}, ValueError),
        ({"start_round": -2}, ValueError),
    ],
)
def test_validation_matches_nvflare(kwargs, error):
    with pytest.raises(error):
        FLModel(**kwargs)


def test_summary_has_nvflare_keys():
    model = FLModel(
        params={"a": 1, "b": 2}, metrics={"acc": 1.0}, current_round=3, total_rounds=5, meta={"k": 1}
    )
    assert model.summary() == {
        "params": 2,
        "metrics": 1,
        "meta": 1,
        "params_type": ParamsType.FULL,
        "current_round": 3,
        "total_rounds": 5,
    }
    assert str(model) == str(model.summary())


def test_nvflare_meta_key_values():
    assert flare.FLMetaKey.PROCESS_RC_FILE == "_process_rc.txt"
    assert flare.FLMetaKey.INITIAL_METRICS == "initial_metrics"


def test_log_records_are_checked_as_nvflare_checks_them():
    from hpcflare.client.api import _checked_record
    from hpcflare.client.model import AnalyticsDataType

    assert _checked_record("loss", np.float32(0.5), AnalyticsDataType.SCALAR) == ("SCALAR", 0.5)
    assert _checked_record("m", {"a": 1.0}, "METRICS") == ("METRICS", {"a": 1.0})
    for key, value, kind, message in (
        ("", 1.0, "SCALAR", "key must be a non-empty str"),
        (3, 1.0, "SCALAR", "key must be a non-empty str"),
        ("loss", 1.0, "NUMBER", "data_type must be one of"),
        ("loss", "high", AnalyticsDataType.SCALAR, "SCALAR value must be a number"),
        ("loss", True, AnalyticsDataType.METRIC, "METRIC value must be a number"),
        ("m", [1.0], AnalyticsDataType.SCALARS, "SCALARS value must be a dict"),
        ("t", 3, AnalyticsDataType.TEXT, "TEXT value must be a str"),
    ):
        with pytest.raises(TypeError, match=message):
            _checked_record(key, value, kind)
