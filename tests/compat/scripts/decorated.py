# NVFlare's decorator style: @flare.evaluate scores the received model (a bare number), @flare.train trains.
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel


@flare.train
def train(input_model=None, step=1.0):
    return FLModel(params={k: v + step for k, v in input_model.params.items()},
                   meta={"NUM_STEPS_CURRENT_ROUND": 1})


@flare.evaluate
def fl_evaluate(input_model=None):
    return float(input_model.params["numpy_key"].sum())


flare.init()
while flare.is_running():
    input_model = flare.receive()
    score = fl_evaluate(input_model)
    assert score == float(input_model.params["numpy_key"].sum())
    train(step=2.0)
