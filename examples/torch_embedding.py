"""Embed the K-FAC-family preconditioner in a plain PyTorch training loop.

The statistics come from forward hooks on every ``nn.Linear``: the layer input ``a`` (with a
ones column for the bias), and a tensor hook on the layer output that receives ``g``, the
pre-activation gradient, during the backward pass.
They stay ``torch.Tensor`` throughout: the preconditioner computes in the tensors' own
namespace, device and dtype (array-api-compat's torch namespace), so nothing is converted to
NumPy. The true Fisher is estimated by back-propagating targets sampled from the model
(Monte Carlo), and the data gradient is preconditioned in ``[W b]`` form.

Run ``python examples/torch_embedding.py`` (digits from scikit-learn, a few seconds on CPU);
``--method`` picks any method of :class:`lowrank_online.curvature.KFACPreconditioner`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_online.curvature import KFACPreconditioner


class LinearStatistics:
    """Capture ``(a, g)`` of every ``nn.Linear`` of a model with hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
        self.a: dict[str, torch.Tensor] = {}
        self.g: dict[str, torch.Tensor] = {}
        for name, mod in self.layers.items():
            mod.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def store_g(grad: torch.Tensor) -> None:
            # the loss is a batch mean: scale back to per-sample gradients of per-sample losses
            self.g[name] = grad.detach() * grad.shape[0]

        def hook(mod: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            a = inputs[0].detach()
            if mod.bias is not None:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], dim=1)
            self.a[name] = a
            if output.requires_grad:
                output.register_hook(store_g)

        return hook

    def weight_grad(self, name: str) -> torch.Tensor:
        mod = self.layers[name]
        if mod.bias is None:
            return mod.weight.grad
        return torch.cat([mod.weight.grad, mod.bias.grad[:, None]], dim=1)

    def set_step(self, name: str, step: torch.Tensor) -> None:
        mod = self.layers[name]
        if mod.bias is None:
            mod.weight.grad.copy_(step)
        else:
            mod.weight.grad.copy_(step[:, :-1])
            mod.bias.grad.copy_(step[:, -1])


def train(method: str = "bkfac", epochs: int = 3, batch_size: int = 64, lr: float = 0.1, seed: int = 0,
          dtype: torch.dtype = torch.float32, **options) -> tuple[list[float], list[float], KFACPreconditioner]:
    """Train a 64-128-10 ReLU network on scikit-learn's digits; returns (losses, accuracies, pre)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    raw = load_digits()
    X = (raw.data - raw.data.mean(axis=0)) / (raw.data.std(axis=0) + 1e-8)
    order = np.random.default_rng(seed).permutation(X.shape[0])
    test, tr = order[:400], order[400:]
    Xt, yt = torch.tensor(X[tr], dtype=dtype), torch.tensor(raw.target[tr])
    Xv, yv = torch.tensor(X[test], dtype=dtype), torch.tensor(raw.target[test])

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dtype)
    stats = LinearStatistics(model)
    pre = KFACPreconditioner(method, **{"rank": 32, "kl_clip": 1e-2, "T_inv": 5, "seed": seed, **options})
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    for _ in range(epochs):
        perm = torch.randperm(Xt.shape[0], generator=gen)
        epoch_loss = 0.0
        for i in range(0, Xt.shape[0] - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            x, y = Xt[idx], yt[idx]
            out = model(x)
            if pre.wants_statistics():
                with torch.no_grad():
                    sampled = torch.multinomial(F.softmax(out, dim=1), 1, generator=gen).squeeze(1)
                F.cross_entropy(out, sampled).backward(retain_graph=True)  # fills stats.g (MC Fisher)
                for name in stats.layers:
                    pre.update(name, stats.a[name], stats.g[name])
                model.zero_grad()
            loss = F.cross_entropy(out, y)
            loss.backward()
            names = list(stats.layers)
            grads = [stats.weight_grad(name) for name in names]
            raw = [pre.precondition(name, g) for name, g in zip(names, grads)]
            scale = pre.clip_scale(raw, grads, lr)
            for name, step in zip(names, raw):
                stats.set_step(name, step * scale)
            opt.step()
            opt.zero_grad()
            if pre.config.damping_adaptation == "lm":
                # Levenberg-Marquardt: the loss change this step achieved on its own batch,
                # against the quadratic model's prediction.
                with torch.no_grad():
                    after = float(F.cross_entropy(model(x), y))
                pre.adapt_damping(after - float(loss.detach()), pre.predicted_change(raw, grads, lr * scale))
            pre.step()
            epoch_loss += float(loss.detach()) * batch_size
        losses.append(epoch_loss / (Xt.shape[0] // batch_size * batch_size))
        with torch.no_grad():
            accs.append(float((model(Xv).argmax(dim=1) == yv).float().mean()))
    return losses, accs, pre


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bkfac")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    losses, accs, pre = train(args.method, args.epochs)
    print(f"method {args.method}")
    for e, (l, a) in enumerate(zip(losses, accs), 1):
        print(f"epoch {e}: train loss {l:.4f}  test accuracy {a:.4f}")
    print(pre.summary())
    held = {name: type(next(iter(pre.layer_state(name).eigenvalues.values()))).__name__ for name in pre.layers}
    print(f"preconditioner state held as: {held}")


if __name__ == "__main__":
    main()
