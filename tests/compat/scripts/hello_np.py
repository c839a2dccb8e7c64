# NVFlare's hello-numpy client, as NVFlare users write it (zero lines changed).
import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.np.constants import NPConstants


def train(weights):
    return weights + 1


def main():
    flare.init()
    site = flare.get_site_name()
    while flare.is_running():
        input_model = flare.receive()
        assert flare.get_task_name() == "train" and flare.is_train()
        previous = input_model.metrics or {}
        weights = input_model.params[NPConstants.NUMPY_KEY]
        new = train(weights)
        out = FLModel(params={NPConstants.NUMPY_KEY: new}, params_type=ParamsType.FULL,
                      metrics={"mean": float(new.mean()), "round_seen": input_model.current_round,
                               "prev_mean": float(previous.get("mean", -1)),
                               "site_no": int(site.split("-")[-1])},
                      meta={"NUM_STEPS_CURRENT_ROUND": int(site.split("-")[-1])})
        flare.send(out)
        assert flare.get_task_name() == "train"  # kept after send, as in NVFlare


if __name__ == "__main__":
    main()
