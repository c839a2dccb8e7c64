# The rest of the Client API surface: init() as a context, ctx= everywhere, task name kept after send,
# system_info / get_config, clear_cache=False keeping the model, shutdown().
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.client.config import ConfigKey

with flare.init() as ctx:
    assert flare.system_info(ctx=ctx)["site_name"] == flare.get_site_name()
    assert flare.get_config()[ConfigKey.TASK_EXCHANGE]["train_task_name"] == "train"
    while flare.is_running(ctx=ctx):
        model = flare.receive(ctx=ctx)
        assert flare.receive() is model  # cached until sent
        flare.log("seen_round", model.current_round)
        flare.send(FLModel(params={k: v + 1 for k, v in model.params.items()}), clear_cache=False, ctx=ctx)
        assert flare.receive(ctx=ctx) is model and flare.get_task_name() == "train"
        flare.clear()
assert not flare.is_running()  # after shutdown (the with block), the API reports no more work
