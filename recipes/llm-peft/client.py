# Federated LoRA / SFT client, written the way NVFlare's client scripts are (the Client API only).
# Each site fine-tunes the shared base model on its own text; in LoRA mode only the adapters travel.
import argparse

import torch
from model import (
    batches,
    build_model,
    eval_loss,
    exchanged,
    held_out_text,
    load_exchanged,
    site_text,
    with_lora,
)

import hpcflare.client as flare


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["lora", "sft"], default="lora")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per round")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    model = build_model(args.size)
    if args.mode == "lora":
        model = with_lora(model, rank=4, alpha=16)
    train = batches(site_text(site), args.batch_size, seed=sum(site.encode()))
    held_out = held_out_text()

    while flare.is_running():
        input_model = flare.receive()
        load_exchanged(model, input_model.params, args.mode)
        global_loss = eval_loss(model, held_out)  # the global model, before this site trains it
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        model.train()
        for _ in range(args.steps):
            x = next(train)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        params = exchanged(model, args.mode)
        sent = sum(v.numel() * v.element_size() for v in params.values())
        print(
            f"{site} round {input_model.current_round}: held-out loss of the global model {global_loss:.3f}, "
            f"last train loss {loss.item():.3f}, sending {len(params)} tensors ({sent / 1e6:.3f} MB)"
        )
        flare.send(
            flare.FLModel(
                params=params,
                metrics={"eval_loss": global_loss, "train_loss": loss.item()},
                meta={"NUM_STEPS_CURRENT_ROUND": args.steps},
            )
        )


if __name__ == "__main__":
    main()
