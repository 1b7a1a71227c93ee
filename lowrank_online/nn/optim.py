"""First-order optimizers over per-layer update directions, with plain-array state.

Directions are in the ``[W b]`` layout of :meth:`MLP.weight_matrix` (the gradient, or the
preconditioned gradient). Weight decay is decoupled (added to the direction after any
preconditioning, ``W <- W - lr (direction + wd W)``), so the factored, linear-time
preconditioning of paper 001 Alg. 8 never has to precondition a full-rank ``wd W`` term.
"""

from __future__ import annotations

from typing import Any

from .. import _validate
from .mlp import MLP

__all__ = ["SGD", "Adam"]


def _decay_term(model: MLP, i: int, weight_decay: float) -> Any:
    """``wd * [W 0]``: no decay on the bias."""
    layer = model.params[i]
    if not model.bias:
        return weight_decay * layer["W"]
    zero = model.xp.zeros((layer["W"].shape[0], 1), dtype=model.dtype, device=model.device)
    return weight_decay * model.xp.concat([layer["W"], zero], axis=1)


class SGD:
    """SGD with heavy-ball momentum: ``v <- mu v + d + wd W``; ``W <- W - lr v``."""

    name = "sgd"

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        self.lr = _validate.check_real(lr, "lr", low=0.0, low_open=True)
        self.momentum = _validate.check_real(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = _validate.check_real(weight_decay, "weight_decay", low=0.0)
        self.buffers: list[Any] | None = None

    def step(self, model: MLP, directions: list[Any]) -> None:
        if self.buffers is None:
            self.buffers = [None] * len(directions)
        for i, d in enumerate(directions):
            if self.weight_decay:
                d = d + _decay_term(model, i, self.weight_decay)
            v = d if self.buffers[i] is None else self.momentum * self.buffers[i] + d
            self.buffers[i] = v
            model.apply_update(i, -self.lr * v)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
        for i, v in enumerate(self.buffers or []):
            if v is not None:
                out[f"buffer{i}"] = v
        return out

    def load_state_dict(self, state: dict[str, Any], model: MLP) -> None:
        self.lr, self.momentum, self.weight_decay = (
            float(state["lr"]),
            float(state["momentum"]),
            float(state["weight_decay"]),
        )
        n = len(model.params)
        self.buffers = [
            model.xp.asarray(state[f"buffer{i}"], device=model.device) if f"buffer{i}" in state else None
            for i in range(n)
        ]


class Adam:
    """Adam (Kingma & Ba) with bias correction and decoupled weight decay (AdamW)."""

    name = "adam"

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ) -> None:
        self.lr = _validate.check_real(lr, "lr", low=0.0, low_open=True)
        self.beta1 = _validate.check_real(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True)
        self.beta2 = _validate.check_real(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)
        self.eps = _validate.check_real(eps, "eps", low=0.0, low_open=True)
        self.weight_decay = _validate.check_real(weight_decay, "weight_decay", low=0.0)
        self.t = 0
        self.m: list[Any] | None = None
        self.v: list[Any] | None = None

    def step(self, model: MLP, directions: list[Any]) -> None:
        xp = model.xp
        self.t += 1
        if self.m is None:
            self.m = [xp.zeros_like(d) for d in directions]
            self.v = [xp.zeros_like(d) for d in directions]
        c1, c2 = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        for i, d in enumerate(directions):
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * d
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * d * d
            update = (self.m[i] / c1) / (xp.sqrt(self.v[i] / c2) + self.eps)
            if self.weight_decay:
                update = update + _decay_term(model, i, self.weight_decay)
            model.apply_update(i, -self.lr * update)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                               "weight_decay": self.weight_decay, "t": self.t}
        for i, (m, v) in enumerate(zip(self.m or [], self.v or [], strict=True)):
            out[f"m{i}"], out[f"v{i}"] = m, v
        return out

    def load_state_dict(self, state: dict[str, Any], model: MLP) -> None:
        self.lr, self.beta1, self.beta2 = float(state["lr"]), float(state["beta1"]), float(state["beta2"])
        self.eps, self.weight_decay, self.t = float(state["eps"]), float(state["weight_decay"]), int(state["t"])
        if "m0" in state:
            n = len(model.params)
            self.m = [model.xp.asarray(state[f"m{i}"], device=model.device) for i in range(n)]
            self.v = [model.xp.asarray(state[f"v{i}"], device=model.device) for i in range(n)]
