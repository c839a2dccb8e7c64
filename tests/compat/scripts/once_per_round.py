# launch_once=False: this script handles exactly one task and exits; hpcflare starts it again for the next.
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel

flare.init()
input_model = flare.receive()
if input_model is not None:
    flare.send(FLModel(params={k: v + 1 for k, v in input_model.params.items()},
                       metrics={"round_seen": input_model.current_round}))
