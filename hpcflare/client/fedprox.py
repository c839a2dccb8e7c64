"""FedProx's client side (Li et al. 2020): a proximal term that keeps local training near the global model.

    prox = ProximalTerm(mu=0.01)
    prox.set_global(model)                 # right after loading the round's global weights
    loss = criterion(model(x), y) + prox(model)

The server side is plain FedAvg, so a FedProx job is a FedAvgRecipe whose client adds this term.
"""

from __future__ import annotations

from typing import Any


class ProximalTerm:
    def __init__(self, mu: float) -> None:
        if mu < 0:
            raise ValueError(f"FedProx mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self._global: list[Any] = []

    def set_global(self, model: Any) -> None:
        self._global = [p.detach().clone() for p in model.parameters()]

    def __call__(self, model: Any) -> Any:
        if not self._global:
            raise RuntimeError("ProximalTerm: call set_global(model) after loading the global weights")
        total = 0.0
        for param, start in zip(model.parameters(), self._global):
            total = total + (param - start).pow(2).sum()
        return 0.5 * self.mu * total


def _pt_fedprox_loss() -> type:
    import torch

    class PTFedProxLoss(torch.nn.Module):
        """NVFlare's ``PTFedProxLoss(mu)``: ``loss(local_model, global_model)`` = mu/2 x the squared distance
        between the two models' parameters (the global one held fixed)."""

        def __init__(self, mu: float = 0.01) -> None:
            super().__init__()
            if mu < 0:
                raise ValueError(f"FedProx mu must be >= 0, got {mu}")
            self.mu = float(mu)

        def forward(self, input: Any, target: Any) -> Any:
            total = 0.0
            for param, fixed in zip(input.parameters(), target.parameters()):
                total = total + (param - fixed.detach()).pow(2).sum()
            return 0.5 * self.mu * total

    return PTFedProxLoss


def __getattr__(name: str) -> Any:
    if name == "PTFedProxLoss":  # torch is imported only by scripts that use it
        cls = _pt_fedprox_loss()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
