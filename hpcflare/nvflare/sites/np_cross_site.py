"""A site of NVFlare's numpy cross-site evaluation: NVFlare's NPTrainer for the submit task (the site's
pre-trained model, ``client_model_dir/best_numpy.npy``) and its NPValidator for the validate task (a dummy score,
``sum(w / max(w))`` plus a random number in [0, 1): for trying the workflow, not for judging a model)."""

import json
from pathlib import Path

import numpy as np

import hpcflare.client as flare

spec = json.loads((Path(__file__).parent / "np_cross_site.json").read_text())
flare.init()
rng = np.random.default_rng()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    if flare.is_submit_model():
        path = Path(spec["client_model_dir"]) / spec["client_model_name"]
        flare.send(flare.FLModel(params={"numpy_key": np.load(path).astype(np.float32)}))
    elif flare.is_evaluate():
        weights = np.asarray(model.params["numpy_key"], dtype=np.float64)
        score = float(np.sum(weights / np.max(weights)) + rng.random())
        print(
            f"{flare.get_site_name()}: dummy validation of {model.meta.get('model_owner', '?')}: {score:.4f}"
        )
        flare.send(flare.FLModel(metrics={"accuracy": score}))
    else:  # NPTrainer's train task: one step of +1, as NVFlare's numpy examples do
        flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
