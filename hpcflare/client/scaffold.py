"""SCAFFOLD's client side (option II control variates); the server side is ``hpcflare.strategy.scaffold``.

    scaffold = ScaffoldClient()
    while flare.is_running():
        model_in = flare.receive()
        net.load_state_dict(scaffold.receive(model_in.params))   # strips the server's control variates
        for x, y in batches:
            loss = criterion(net(x), y); opt.zero_grad(); loss.backward()
            scaffold.correct(net)                                # grad += c - c_i
            opt.step()
        controls = scaffold.finish(net, steps=len(batches), lr=lr)   # updates c_i, returns delta c_i
        flare.send(flare.FLModel(params={**net.state_dict(), **controls}, meta={"NUM_STEPS_CURRENT_ROUND": ...}))

The site's own control variate ``c_i`` stays in this object (in the site's process) across rounds.
"""

from __future__ import annotations

from typing import Any

from hpcflare.strategy.scaffold import CONTROL_PREFIX


class ScaffoldClient:
    def __init__(self) -> None:
        self.c_global: dict[str, Any] = {}
        self.c_local: dict[str, Any] = {}
        self.x_global: dict[str, Any] = {}

    def receive(self, params: dict[str, Any]) -> dict[str, Any]:
        """The model part of the round's params; remembers the global weights and control variate."""
        model = {k: v for k, v in params.items() if not k.startswith(CONTROL_PREFIX)}
        self.c_global = {
            k[len(CONTROL_PREFIX) :]: v for k, v in params.items() if k.startswith(CONTROL_PREFIX)
        }
        if not self.c_global:
            raise RuntimeError(
                "no SCAFFOLD control variates in the received model: is the job's strategy 'scaffold'?"
            )
        self.x_global = {k: v.detach().clone() for k, v in model.items()}
        for name, c in self.c_global.items():
            self.c_local.setdefault(name, c.new_zeros(c.shape))
        return model

    def correct(self, net: Any) -> None:
        """After backward(), before the optimizer step: grad += c - c_i."""
        for name, param in net.named_parameters():
            if param.grad is not None and name in self.c_global:
                param.grad.add_(self.c_global[name] - self.c_local[name])

    def finish(self, net: Any, steps: int, lr: float) -> dict[str, Any]:
        """c_i+ = c_i - c + (x - y_i) / (K lr); returns {CONTROL_PREFIX + name: c_i+ - c_i} to send."""
        if steps < 1 or lr <= 0:
            raise ValueError("ScaffoldClient.finish needs steps >= 1 and lr > 0")
        deltas = {}
        for name, param in net.named_parameters():
            if name not in self.c_global:
                continue
            new = (
                self.c_local[name]
                - self.c_global[name]
                + (self.x_global[name] - param.detach()) / (steps * lr)
            )
            deltas[CONTROL_PREFIX + name] = new - self.c_local[name]
            self.c_local[name] = new
        return deltas
