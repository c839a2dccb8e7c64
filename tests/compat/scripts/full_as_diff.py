# Sends FULL weights; the job's params_transfer_type DIFF turns them into a difference before they leave.
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

flare.init()
while flare.is_running():
    input_model = flare.receive()
    flare.send(FLModel(params={k: v + 2 for k, v in input_model.params.items()}))
