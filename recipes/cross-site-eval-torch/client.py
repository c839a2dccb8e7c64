"""A client for every task kind (NVFlare's pattern): train, evaluate a model it is sent, submit its own model.

Trains the tiny MLP on this site's shard; evaluates on the site's own data (a site-specific view, which is
what cross-site evaluation is for: how well does each site's model do on everyone else's data?).
"""

import argparse

import torch
import torch.nn.functional as F

import hpcflare.client as flare
from hpcflare.data.synthetic import accuracy, site_shard, tiny_mlp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-sites", type=int, default=4)
    parser.add_argument("--split", choices=["iid", "noniid"], default="noniid")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    flare.init()
    site_index = int(flare.get_site_name().rsplit("-", 1)[-1]) - 1
    x, y = site_shard(site_index, args.n_sites, args.split)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    net, local = tiny_mlp(), tiny_mlp()
    shuffle = torch.Generator().manual_seed(site_index)
    while flare.is_running():
        model_in = flare.receive()
        if flare.is_submit_model():  # our own latest local model
            flare.send(flare.FLModel(params=local.state_dict()))
            continue
        net.load_state_dict(model_in.params)
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"accuracy": accuracy(net, x, y)}))
            continue
        opt = torch.optim.SGD(net.parameters(), lr=args.lr)
        steps = 0
        for _ in range(args.local_epochs):
            order = torch.randperm(len(Y), generator=shuffle)
            for i in range(0, len(Y), 32):
                batch = order[i:i + 32]
                loss = F.cross_entropy(net(X[batch]), Y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        local.load_state_dict(net.state_dict())
        flare.send(flare.FLModel(params=net.state_dict(), metrics={"train_loss": float(loss)},
                                 meta={"NUM_STEPS_CURRENT_ROUND": steps}))


if __name__ == "__main__":
    main()
