# Train, submit the local model, evaluate others' models with a metrics-only result (NVFlare's cross-site eval).
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

flare.init()
site_no = int(flare.get_site_name().split("-")[-1])
local = None
while flare.is_running():
    input_model = flare.receive()
    if flare.is_train():
        local = {k: v + site_no for k, v in input_model.params.items()}
        flare.send(FLModel(params=local))
    elif flare.is_submit_model():
        flare.send(FLModel(params=local))
    elif flare.is_evaluate():
        flare.send(FLModel(metrics={"score": float(input_model.params["numpy_key"].sum())}))
