"""A client for every task kind (NVFlare's pattern): train, evaluate a model it is sent, submit its own model.

Trains the tiny MLP on this site's shard; evaluates on the site's own data (a site-specific view, which is
what cross-site evaluation is for: how well does each site's model do on everyone else's data?).
"""

import hpcflare.client as flare
from hpcflare.data.synthetic import LocalTrainer, accuracy, client_arguments, tiny_mlp


def main() -> None:
    args = client_arguments()
    flare.init()
    trainer, net, local = LocalTrainer(flare.get_site_name(), args), tiny_mlp(), tiny_mlp()
    x, y = trainer.X.numpy(), trainer.Y.numpy()
    while flare.is_running():
        model_in = flare.receive()
        if flare.is_submit_model():  # our own latest local model
            flare.send(flare.FLModel(params=local.state_dict()))
            continue
        net.load_state_dict(model_in.params)
        if flare.is_evaluate():  # metrics only
            flare.send(flare.FLModel(metrics={"accuracy": accuracy(net, x, y)}))
            continue
        steps, loss = trainer.train(net)
        local.load_state_dict(net.state_dict())
        flare.send(
            flare.FLModel(
                params=net.state_dict(), metrics={"train_loss": loss}, meta={"NUM_STEPS_CURRENT_ROUND": steps}
            )
        )


if __name__ == "__main__":
    main()
