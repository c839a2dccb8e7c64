"""Tree models on the wire: the server's structural checks of untrusted XGBoost JSON, and the bagging merge
(round 1's forest = the row-weighted mean of the sites' models in margin space)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcflare.errors import UpdateRejectedError
from hpcflare.strategy.api import ClientUpdate, UpdateKind
from hpcflare.strategy.xgb_bagging import XGBBagging
from hpcflare.tabular import xgb_model

xgb = pytest.importorskip("xgboost")


def trained(seed: int, n: int, start=None, features: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = (x[:, 0] + rng.normal(size=n) * 0.5 > 0.3 * seed).astype(float)
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgb.DMatrix(x, label=y),
        1,
        xgb_model=start,
    ), x


def upload(site: str, booster, weight: float) -> ClientUpdate:
    return ClientUpdate(
        site, {"model": xgb_model.to_tensor(bytes(booster.save_raw("json")))}, UpdateKind.FULL, weight
    )


def test_round_one_forest_is_the_weighted_mean_of_the_sites_models():
    strategy = XGBBagging()
    empty = {"model": xgb_model.to_tensor(xgb_model.EMPTY)}
    agg = strategy.new_aggregator(empty)
    (a, x), (b, _) = trained(0, 300), trained(1, 600)
    agg.add(upload("site-1", a, 300))
    agg.add(upload("site-2", b, 600))
    merged = xgb.Booster(model_file=bytearray(xgb_model.from_tensor(agg.result()["model"])))
    margin = lambda m: m.predict(xgb.DMatrix(x), output_margin=True)  # noqa: E731
    np.testing.assert_allclose(
        margin(merged), (300 * margin(a) + 600 * margin(b)) / 900, rtol=1e-5, atol=1e-5
    )
    # round 2: the sites continue from the forest and add one tree each
    agg2 = strategy.new_aggregator({"model": xgb_model.to_tensor(bytes(merged.save_raw("json")))})
    agg2.add(upload("site-1", trained(0, 300, start=merged)[0], 1))
    agg2.add(upload("site-2", trained(1, 600, start=merged)[0], 1))
    assert xgb_model.num_trees(json.loads(xgb_model.from_tensor(agg2.result()["model"]))) == 4


def tampered(change) -> bytes:
    model = json.loads(bytes(trained(0, 200)[0].save_raw("json")))
    change(model["learner"]["gradient_booster"]["model"]["trees"][0], model)
    return json.dumps(model).encode()


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda t, m: t["left_children"].__setitem__(0, 999), "child index out of range"),
        (lambda t, m: t["split_indices"].__setitem__(0, 77), "outside 0..4"),
        (lambda t, m: t["split_conditions"].__setitem__(-1, float("nan")), "NaN/Inf"),
        (lambda t, m: t["left_children"].__setitem__(0, 0), "precedes its parent"),
        (lambda t, m: t["parents"].pop(), "entries for"),
        (lambda t, m: m["learner"]["gradient_booster"].__setitem__("name", "gblinear"), "only gbtree"),
    ],
)
def test_a_malformed_tree_model_is_rejected_with_the_reason(change, reason):
    with pytest.raises(UpdateRejectedError, match=reason):
        xgb_model.parse(tampered(change), "site-9")
    with pytest.raises(UpdateRejectedError, match="not a usable XGBoost JSON"):
        xgb_model.parse(b"{not json", "site-9")


def test_an_upload_with_other_features_or_no_new_tree_is_rejected():
    base, _ = trained(0, 200)
    strategy = XGBBagging()
    agg = strategy.new_aggregator({"model": xgb_model.to_tensor(bytes(base.save_raw("json")))})
    with pytest.raises(UpdateRejectedError, match="num_feature is 6"):
        agg.add(upload("site-2", trained(1, 200, features=6)[0], 1))
    with pytest.raises(UpdateRejectedError, match="no new one"):
        agg.add(upload("site-3", base, 1))
