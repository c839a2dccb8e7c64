"""recipes/hello-tf: FedAvg on a Keras model; the client sends weights per layer as NVFlare's TensorFlow examples
do, and the result loads back into the Keras model."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "hello-tf"


def test_hello_tf_learns_and_its_result_loads_into_keras(tmp_path):
    pytest.importorskip("tensorflow")
    out = subprocess.run(
        [
            sys.executable,
            str(RECIPE / "job.py"),
            "--num-rounds",
            "3",
            "--env",
            "local",
            "--job-root",
            str(tmp_path / "jobs"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert ": completed" in out.stdout
    (job,) = (tmp_path / "jobs").iterdir()
    rows = [r for r in csv.DictReader(open(job / "tracking" / "metrics.csv")) if r["site"] == "global"]
    accuracy = {int(r["round"]): float(r["value"]) for r in rows if r["key"] == "accuracy"}
    assert sorted(accuracy) == [1, 2, 3]
    assert accuracy[3] > accuracy[1] and accuracy[3] > 0.7  # three classes: chance is a third

    import importlib.util

    import numpy as np
    import safetensors.numpy

    # loaded under its own name: other recipes' tests import their own `model` module
    spec = importlib.util.spec_from_file_location("hello_tf_model", RECIPE / "model.py")
    assert spec is not None and spec.loader is not None
    recipe_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_model)
    TFNet = recipe_model.TFNet

    from hpcflare.client.keras import keras_weights, set_keras_weights

    result = safetensors.numpy.load_file(str(job / "models" / "global_model.safetensors"))
    assert set(result) == {"hidden[0]", "hidden[1]", "logits[0]", "logits[1]"}
    assert all(v.dtype == np.float32 for v in result.values())
    model = set_keras_weights(TFNet(), result)
    np.testing.assert_array_equal(keras_weights(model)["logits"][0], result["logits[0]"])
    client = (job / "logs" / "site-1.out").read_text()
    assert "global model accuracy" in client
