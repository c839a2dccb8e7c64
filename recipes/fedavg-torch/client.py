"""FedAvg client: a tiny MLP trained on this site's shard of the synthetic 10-class task (hpcflare.data).

An ordinary NVFlare-style PyTorch client: receive the global weights, train a few local epochs, send the
new weights with NUM_STEPS_CURRENT_ROUND as the aggregation weight. The global model's accuracy on the
shared held-out set is reported as a metric (it reaches the server's round log and tracking files).
FedOpt and swarm sites run this same script.
"""

import hpcflare.client as flare
from hpcflare.data.synthetic import LocalTrainer, accuracy, client_arguments, tiny_mlp


def main() -> None:
    args = client_arguments()
    flare.init()
    trainer, net = LocalTrainer(flare.get_site_name(), args), tiny_mlp()
    while flare.is_running():
        model_in = flare.receive()
        net.load_state_dict(model_in.params)
        global_acc = accuracy(net, *trainer.holdout)
        steps, loss = trainer.train(net)
        flare.send(
            flare.FLModel(
                params=net.state_dict(),
                metrics={"accuracy": global_acc, "loss": loss},
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )


if __name__ == "__main__":
    main()
