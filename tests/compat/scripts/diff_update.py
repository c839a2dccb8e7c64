# Sends a DIFF (only the change), as NVFlare's train_diff example does.
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

flare.init()
while flare.is_running():
    input_model = flare.receive()
    diff = {k: v * 0 + (1 if flare.get_site_name() == "site-1" else 3) for k, v in input_model.params.items()}
    flare.send(FLModel(params_type=ParamsType.DIFF, params=diff))
