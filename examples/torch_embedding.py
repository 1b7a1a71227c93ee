"""K-FAC-family preconditioning of a PyTorch model in two lines, with :mod:`lowrank_online.torch`.

The whole integration is ``kfac = KFAC(model, method)`` and ``kfac.step()`` between
``loss.backward()`` and ``opt.step()``: KFAC finds the model's Linear / Conv2d layers, captures
their statistics with hooks (the Monte-Carlo Fisher's extra backward pass included) and
preconditions their ``.grad`` in place, in the tensors' own namespace, device and dtype (nothing
is converted to NumPy). ``--optimizer`` uses the one-object form, :class:`KFACOptimizer`.

Run ``python examples/torch_embedding.py`` (a 64-128-10 network on scikit-learn's digits, a few
seconds on CPU); ``--method`` picks any of :data:`lowrank_online.curvature.METHODS`, ``--cnn``
trains a small CNN. The settings (plain SGD at lr 0.1, KL-clipping 1e-2, rank 32, statistics
every step, inverses every 5) are those of the stability study in the curvature docs
(``evidence/stability.py``), which passes the damping options through ``train(**options)``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_online.torch import KFAC, KFACOptimizer


def digits(seed: int = 0, dtype: torch.dtype = torch.float32):
    """scikit-learn's digits, standardised; 400 test images, the rest for training."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    X = torch.tensor(raw.data, dtype=torch.float64)
    X = ((X - X.mean(dim=0)) / (X.std(dim=0) + 1e-8)).to(dtype)
    y = torch.tensor(raw.target)
    order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    return (X[order[400:]], y[order[400:]]), (X[order[:400]], y[order[:400]])


def model_for(cnn: bool) -> nn.Module:
    if cnn:
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train(method: str = "bkfac", epochs: int = 3, batch_size: int = 64, lr: float = 0.1, seed: int = 0,
          dtype: torch.dtype = torch.float32, cnn: bool = False, optimizer: bool = False, **options):
    """Train on digits; returns (per-epoch train losses, test accuracies, the preconditioner).

    ``options`` go to :class:`~lowrank_online.torch.KFAC` (and through it to the preconditioner:
    ``gradient_damping=0.1, damping_adaptation="lm"``, say).
    """
    (Xt, yt), (Xv, yv) = digits(seed, dtype)
    torch.manual_seed(seed)
    model = model_for(cnn).to(dtype)
    settings = {"rank": 32, "kl_clip": 1e-2, "T_updt": 1, "T_inv": 5, "seed": seed, **options}
    if optimizer:
        opt = KFACOptimizer(model, "sgd", lr=lr, method=method, **settings)
        kfac = opt.kfac
    else:
        kfac = KFAC(model, method, lr=lr, **settings)  # line 1
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    for _ in range(epochs):
        perm = torch.randperm(Xt.shape[0], generator=gen)
        total, count = 0.0, 0
        for i in range(0, Xt.shape[0] - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            out = model(Xt[idx])
            loss = F.cross_entropy(out, yt[idx])
            loss.backward()
            if not optimizer:
                kfac.step()  # line 2: precondition .grad in place
            opt.step()
            if kfac.preconditioner.config.damping_adaptation == "lm":
                # Levenberg-Marquardt: the loss this step achieved on its own batch
                with torch.no_grad():
                    kfac.adapt_damping(float(loss.detach()), float(F.cross_entropy(model(Xt[idx]), yt[idx])))
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        losses.append(total / count)
        model.eval()
        with torch.no_grad():
            accs.append(float((model(Xv).argmax(dim=1) == yv).float().mean()))
        model.train()
    return losses, accs, kfac.preconditioner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bkfac", help="curvature method (default bkfac)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cnn", action="store_true", help="a small CNN instead of the MLP")
    parser.add_argument("--optimizer", action="store_true", help="use KFACOptimizer instead of KFAC + SGD")
    args = parser.parse_args()
    losses, accs, pre = train(args.method, args.epochs, cnn=args.cnn, optimizer=args.optimizer)
    print(f"method {args.method}")
    for e, (loss, acc) in enumerate(zip(losses, accs, strict=True), 1):
        print(f"epoch {e}: train loss {loss:.4f}  test accuracy {acc:.4f}")
    print(pre.summary())
    held = {name: type(next(iter(pre.layer_state(name).eigenvalues.values()), None)).__name__ for name in pre.layers}
    print(f"preconditioner state held as: {held}")


if __name__ == "__main__":
    main()
