"""The split network: a bottom per site (its own columns -> HIDDEN units) and a top at the label owner (every
site's bottom output, concatenated in site order -> one logit). The same functions train it centrally on the
joined table, the reference split training is compared with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def bottom(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU())


def top(inputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 16), nn.ReLU(), nn.Linear(16, 1))


def initial_parts(
    widths: dict[str, int], label_owner: str, hidden: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every site's part of the initial model, named '<site>/bottom.*' (and '<label owner>/top.*')."""
    torch.manual_seed(seed)
    parts = {}
    for site in sorted(widths):
        parts.update(
            {f"{site}/bottom.{k}": v.numpy() for k, v in bottom(widths[site], hidden).state_dict().items()}
        )
    net = top(hidden * len(widths))
    parts.update({f"{label_owner}/top.{k}": v.numpy() for k, v in net.state_dict().items()})
    return parts


def load(net: nn.Module, params: dict, prefix: str) -> nn.Module:
    """``net`` with the weights named ``prefix``* in ``params`` (numpy arrays or tensors)."""
    net.load_state_dict(
        {k[len(prefix) :]: torch.as_tensor(np.asarray(v)) for k, v in params.items() if k.startswith(prefix)}
    )
    return net


def part_of(net: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def batches(n_train: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The training rows of each batch of an epoch: the same at every site (same seed, same aligned rows)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return [order[i : i + batch_size] for i in range(0, n_train, batch_size)]


def standardize(x: np.ndarray, n_train: int) -> torch.Tensor:
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    return torch.from_numpy(((x - mean) / std).astype(np.float32))


def central(
    columns: dict[str, np.ndarray],
    y: np.ndarray,
    parts: dict[str, np.ndarray],
    label_owner: str,
    hidden: int,
    epochs: int,
    batch_size: int,
    lr: float,
    val_share: float,
    seed: int = 0,
) -> float:
    """Train the same split model centrally on the joined table (same start, batches and SGD): validation
    accuracy after ``epochs``."""
    sites = sorted(columns)
    n_train = int(len(y) * (1 - val_share))
    xs = {s: standardize(columns[s], n_train) for s in sites}
    bottoms = {s: load(bottom(columns[s].shape[1], hidden), parts, f"{s}/bottom.") for s in sites}
    head = load(top(hidden * len(sites)), parts, f"{label_owner}/top.")
    params = [p for net in [*bottoms.values(), head] for p in net.parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    target = torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        for idx in batches(n_train, batch_size, seed, epoch):
            out = head(torch.cat([bottoms[s](xs[s][idx]) for s in sites], dim=1))
            loss = loss_fn(out, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        val = slice(n_train, len(y))
        logits = head(torch.cat([bottoms[s](xs[s][val]) for s in sites], dim=1))
        return float(((logits > 0).float() == target[val]).float().mean())
