# An NVFlare-style numpy client: trains by adding --add, evaluates by the mean, and answers cross-site
# evaluation's tasks the way NVFlare's examples do.
import argparse

import nvflare.client as flare
from helpers import mean_of

parser = argparse.ArgumentParser()
parser.add_argument("--add", type=float, default=1.0)
args = parser.parse_args()

flare.init()
local = None
while flare.is_running():
    model = flare.receive()
    weights = model.params["numpy_key"]
    if flare.is_submit_model():
        name = model.meta["submit_model_name"]  # KeyError if the task does not say which model
        print(f"submit {name}", flush=True)
        flare.send(flare.FLModel(params={"numpy_key": local}))
        continue
    if flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"accuracy": mean_of(weights)}))
        continue
    meta = model.meta
    print(
        f"round {model.current_round} fedprox_mu={meta.get('fedprox_mu')} nr={meta.get('nr_aggregated')}",
        flush=True,
    )
    flare.log("mean_before", mean_of(weights), flare.AnalyticsDataType.SCALAR)
    local = weights + args.add
    flare.send(flare.FLModel(params={"numpy_key": local}, metrics={"accuracy": mean_of(local)}))
