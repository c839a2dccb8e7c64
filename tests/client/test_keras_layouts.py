"""Keras layouts on the wire: a list of arrays, or arrays per layer, leave a site as named tensors and come back
in the shape the script sent, dtypes kept; every other layout is untouched."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.client.keras import flatten, unflatten


def test_a_list_of_weights_round_trips_in_order():
    weights = [np.ones((3, 2), np.float32), np.zeros(2, np.float16)] + [
        np.full(1, i, np.float64) for i in range(11)
    ]
    flat = flatten(weights)
    assert list(flat)[:3] == ["[0]", "[1]", "[2]"]
    back = unflatten(dict(reversed(list(flat.items()))))  # the wire may reorder names
    assert isinstance(back, list) and len(back) == 13
    assert back[1].dtype == np.float16 and [float(v[0]) for v in back[2:]] == list(map(float, range(11)))


def test_weights_per_layer_round_trip():
    per_layer = {"dense": [np.ones((4, 3)), np.zeros(3)], "out": (np.ones((3, 1)), np.zeros(1))}
    flat = flatten(per_layer)
    assert set(flat) == {"dense[0]", "dense[1]", "out[0]", "out[1]"}
    back = unflatten(flat)
    assert set(back) == {"dense", "out"} and all(isinstance(v, list) and len(v) == 2 for v in back.values())
    np.testing.assert_array_equal(back["out"][0], np.ones((3, 1)))


@pytest.mark.parametrize(
    "params",
    [
        {"w": np.zeros(2), "b": np.ones(1)},  # a plain dict of arrays
        {"layers.0.weight": np.zeros(2)},  # a torch state_dict
        {"x[0]": np.zeros(1), "y": np.zeros(1)},  # not every name indexed
        {"x[0]": np.zeros(1), "x[2]": np.zeros(1)},  # a gap: not a flattened list
        {},
    ],
)
def test_other_layouts_pass_through(params):
    assert unflatten(flatten(params)) is params


def test_a_layer_without_weights_sends_nothing():
    assert set(flatten({"dropout": [], "dense": [np.zeros(1)]})) == {"dense[0]"}
