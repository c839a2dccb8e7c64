"""FedProx client: fedavg-torch's client plus the proximal term mu/2 ||w - w_global||^2 in the loss.

The two FedProx lines are marked; the server runs plain FedAvg.
"""

import argparse

import torch
import torch.nn.functional as F

import hpcflare.client as flare
from hpcflare.client.fedprox import ProximalTerm
from hpcflare.data.synthetic import accuracy, site_shard, holdout_set, tiny_mlp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-sites", type=int, default=8)
    parser.add_argument("--split", choices=["iid", "noniid"], default="noniid")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight")
    args = parser.parse_args()

    flare.init()
    site_index = int(flare.get_site_name().rsplit("-", 1)[-1]) - 1
    x, y = site_shard(site_index, args.n_sites, args.split)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    x_test, y_test = holdout_set()
    net = tiny_mlp()
    shuffle = torch.Generator().manual_seed(site_index)
    prox = ProximalTerm(args.mu)
    while flare.is_running():
        model_in = flare.receive()
        net.load_state_dict(model_in.params)
        global_acc = accuracy(net, x_test, y_test)
        prox.set_global(net)  # FedProx
        opt = torch.optim.SGD(net.parameters(), lr=args.lr)
        steps = 0
        for _ in range(args.local_epochs):
            order = torch.randperm(len(Y), generator=shuffle)
            for i in range(0, len(Y), args.batch):
                batch = order[i:i + args.batch]
                loss = F.cross_entropy(net(X[batch]), Y[batch]) + prox(net)  # FedProx
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        flare.send(flare.FLModel(params=net.state_dict(), metrics={"accuracy": global_acc, "loss": float(loss)},
                                 meta={"NUM_STEPS_CURRENT_ROUND": steps}))


if __name__ == "__main__":
    main()
