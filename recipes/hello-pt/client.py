# NVFlare's hello-pt client, written the way NVFlare's examples are: this file runs unchanged in hpcflare
# (zero-change mode). Porting by hand instead means one line: `import hpcflare.client as flare`, and
# `from hpcflare.client.tracking import SummaryWriter`.
import argparse

import nvflare.client as flare
import torch
from model import SimpleNetwork, synthetic_images
from nvflare.client.tracking import SummaryWriter
from torch.utils.data import DataLoader, TensorDataset


def evaluate(net, loader):
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (net(images).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return correct / total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    seed = sum(site.encode())
    images, labels = synthetic_images(seed)
    train_loader = DataLoader(
        TensorDataset(images[:448], labels[:448]),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    test_loader = DataLoader(TensorDataset(images[448:], labels[448:]), batch_size=64)
    net = SimpleNetwork()
    loss_fn = torch.nn.CrossEntropyLoss()
    summary_writer = SummaryWriter()

    while flare.is_running():
        input_model = flare.receive()
        print(f"site={site}, current_round={input_model.current_round}")
        net.load_state_dict(input_model.params)
        accuracy = evaluate(net, test_loader)  # the global model, scored on this site's test data

        optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        net.train()
        steps = args.epochs * len(train_loader)
        for epoch in range(args.epochs):
            running_loss = 0.0
            for i, (batch, target) in enumerate(train_loader):
                optimizer.zero_grad()
                loss = loss_fn(net(batch), target)
                loss.backward()
                optimizer.step()
                running_loss += loss.item()
                global_step = input_model.current_round * steps + epoch * len(train_loader) + i
                summary_writer.add_scalar(
                    tag="loss_for_each_batch", scalar=loss.item(), global_step=global_step
                )
            print(f"site={site}, epoch {epoch}: loss {running_loss / len(train_loader):.3f}")

        output_model = flare.FLModel(
            params=net.cpu().state_dict(),
            metrics={"accuracy": accuracy},
            meta={"NUM_STEPS_CURRENT_ROUND": steps},
        )
        flare.send(output_model)


if __name__ == "__main__":
    main()
