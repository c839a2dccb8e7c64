"""Swarm client (an ordinary FedAvg client; the sites aggregate in turn): a tiny MLP trained on this site's shard of the synthetic 10-class task (hpcflare.data).

An ordinary NVFlare-style PyTorch client: receive the global weights, train a few local epochs, send the
new weights with NUM_STEPS_CURRENT_ROUND as the aggregation weight. The global model's accuracy on the
shared held-out test set is reported as a metric (it reaches the server's round log and tracking files).
"""

import argparse

import torch
import torch.nn.functional as F

import hpcflare.client as flare
from hpcflare.data.synthetic import accuracy, site_shard, holdout_set, tiny_mlp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-sites", type=int, default=8)
    parser.add_argument("--split", choices=["iid", "noniid"], default="noniid")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    flare.init()
    site_index = int(flare.get_site_name().rsplit("-", 1)[-1]) - 1
    x, y = site_shard(site_index, args.n_sites, args.split)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    x_test, y_test = holdout_set()
    net = tiny_mlp()
    shuffle = torch.Generator().manual_seed(site_index)
    while flare.is_running():
        model_in = flare.receive()
        net.load_state_dict(model_in.params)
        global_acc = accuracy(net, x_test, y_test)
        opt = torch.optim.SGD(net.parameters(), lr=args.lr)
        steps = 0
        for _ in range(args.local_epochs):
            order = torch.randperm(len(Y), generator=shuffle)
            for i in range(0, len(Y), args.batch):
                batch = order[i:i + args.batch]
                loss = F.cross_entropy(net(X[batch]), Y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        flare.send(flare.FLModel(params=net.state_dict(), metrics={"accuracy": global_acc, "loss": float(loss)},
                                 meta={"NUM_STEPS_CURRENT_ROUND": steps}))


if __name__ == "__main__":
    main()
