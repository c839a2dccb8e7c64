"""FedProx client: fedavg-torch's client plus the proximal term mu/2 ||w - w_global||^2 in the loss.

The FedProx lines are marked; the server runs plain FedAvg.
"""

import hpcflare.client as flare
from hpcflare.client.fedprox import ProximalTerm
from hpcflare.data.synthetic import LocalTrainer, accuracy, client_arguments, tiny_mlp


def main() -> None:
    args = client_arguments(lambda p: p.add_argument("--mu", type=float, default=0.01))
    flare.init()
    trainer, net = LocalTrainer(flare.get_site_name(), args), tiny_mlp()
    prox = ProximalTerm(args.mu)  # FedProx
    while flare.is_running():
        model_in = flare.receive()
        net.load_state_dict(model_in.params)
        global_acc = accuracy(net, *trainer.holdout)
        prox.set_global(net)  # FedProx: the round's starting point
        steps, loss = trainer.train(net, extra_loss=prox)  # FedProx: loss + mu/2 ||w - w_global||^2
        flare.send(
            flare.FLModel(
                params=net.state_dict(),
                metrics={"accuracy": global_acc, "loss": loss},
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )


if __name__ == "__main__":
    main()
