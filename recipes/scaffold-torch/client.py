"""SCAFFOLD client: fedavg-torch's client with control-variate gradient correction (marked lines).

The server's control variate arrives with the model and this site's delta c_i leaves with its weights.
"""

import hpcflare.client as flare
from hpcflare.client.scaffold import ScaffoldClient
from hpcflare.data.synthetic import LocalTrainer, accuracy, client_arguments, tiny_mlp


def main() -> None:
    args = client_arguments()
    flare.init()
    trainer, net = LocalTrainer(flare.get_site_name(), args), tiny_mlp()
    scaffold = ScaffoldClient()
    while flare.is_running():
        model_in = flare.receive()
        net.load_state_dict(scaffold.receive(model_in.params))  # SCAFFOLD: strip the control variates
        global_acc = accuracy(net, *trainer.holdout)
        steps, loss = trainer.train(net, after_backward=scaffold.correct)  # SCAFFOLD: grad += c - c_i
        controls = scaffold.finish(net, steps=steps, lr=args.lr)  # SCAFFOLD: new c_i; send delta c_i
        flare.send(
            flare.FLModel(
                params={**net.state_dict(), **controls},
                metrics={"accuracy": global_acc, "loss": loss},
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )


if __name__ == "__main__":
    main()
