"""SplitNN, site side: align this site's rows to the PSI intersection, then per round (one pass over the rows)
train this site's bottom on its columns, and at the label owner the top, exchanging activations and gradients
per batch through the server; validate, and send this site's part of the model."""

import argparse

import numpy as np
import torch
from model import batches, bottom, load, part_of, standardize, top
from torch import nn

import hpcflare.client as flare
from hpcflare.client import split
from hpcflare.tabular.data import add_vertical_arguments, vertical_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--val-share", type=float, default=0.2)
    add_vertical_arguments(parser, n_sites=2, rows=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    flare.init()
    site = flare.get_site_name()
    loss_fn = nn.BCEWithLogitsLoss()
    nets = None
    while flare.is_running():
        model = flare.receive()
        link = split.link(model)
        owner = link.is_label_owner
        if nets is None:  # the data, once
            x, y = vertical_table(site, owner, args)
            n_train = int(len(x) * (1 - args.val_share))
            xs = standardize(x, n_train)
            target = None if y is None else torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
            nets = {"bottom": bottom(x.shape[1], args.hidden)}
            if owner:
                nets["top"] = top(args.hidden * len(link.sites))
        for name, net in nets.items():
            load(net, model.params, f"{site}/{name}.")
        opt = torch.optim.SGD([p for net in nets.values() for p in net.parameters()], lr=args.lr)
        losses = []
        for b, idx in enumerate(batches(n_train, args.batch_size, args.seed, model.current_round)):
            out = nets["bottom"](xs[idx])
            if owner:
                acts = {s: torch.from_numpy(a).requires_grad_() for s, a in link.activations(b).items()}
                joined = torch.cat([out if s == site else acts[s] for s in link.sites], dim=1)
                loss = loss_fn(nets["top"](joined), target[idx])
                opt.zero_grad()
                loss.backward()
                link.send_gradients(b, {s: a.grad for s, a in acts.items()})
                opt.step()
                losses.append(float(loss))
            else:
                link.send_activations(b, out)
                grad = torch.from_numpy(link.gradient(b))
                opt.zero_grad()
                out.backward(grad)
                opt.step()
        metrics = {}
        with torch.no_grad():
            val = np.arange(n_train, len(xs))
            for b, start in enumerate(range(0, len(val), 1024)):
                rows = val[start : start + 1024]
                out = nets["bottom"](xs[rows])
                if owner:
                    acts = link.activations(b, phase="val")
                    joined = torch.cat(
                        [out if s == site else torch.from_numpy(acts[s]) for s in link.sites], dim=1
                    )
                    logits = nets["top"](joined)
                    metrics.setdefault("val_correct", 0.0)
                    metrics["val_correct"] += float(((logits > 0).float() == target[rows]).sum())
                    metrics["val_loss_sum"] = metrics.get("val_loss_sum", 0.0) + float(
                        loss_fn(logits, target[rows]) * len(rows)
                    )
                else:
                    link.send_activations(b, out, phase="val")
        if owner:
            metrics = {
                "train_loss": float(np.mean(losses)),
                "val_loss": metrics["val_loss_sum"] / len(val),
                "val_accuracy": metrics["val_correct"] / len(val),
            }
            print(
                f"round {model.current_round}: train loss {metrics['train_loss']:.4f}, val accuracy {metrics['val_accuracy']:.3f}"
            )
        part = {k: v for name, net in nets.items() for k, v in part_of(net, f"{site}/{name}.").items()}
        flare.send(flare.FLModel(params=part, metrics=metrics, meta={"NUM_STEPS_CURRENT_ROUND": n_train}))


if __name__ == "__main__":
    main()
