"""K-FAC-family preconditioning of a PyTorch model in two lines, with :mod:`lowrank_online.torch`.

The whole integration is ``kfac = KFAC(model, method)`` and ``kfac.step()`` between
``loss.backward()`` and ``opt.step()``: KFAC finds the model's Linear / Conv2d layers, captures
their statistics with hooks (the Monte-Carlo Fisher's extra backward pass included) and
preconditions their ``.grad`` in place. (``examples/torch_embedding.py`` shows the ~70 lines of
hooks this replaces.) ``--optimizer`` switches to the one-object form, :class:`KFACOptimizer`.

Run ``python examples/torch_kfac.py`` (digits from scikit-learn, a few seconds on CPU);
``--method`` picks any of :data:`lowrank_online.curvature.METHODS`, ``--cnn`` trains a small CNN.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_online.torch import KFAC, KFACOptimizer


def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    raw = load_digits()
    X = torch.tensor(raw.data / 16.0, dtype=torch.float32)
    X, y = X - X.mean(dim=0), torch.tensor(raw.target)
    order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    return (X[order[400:]], y[order[400:]]), (X[order[:400]], y[order[:400]])


def model_for(cnn: bool) -> nn.Module:
    if cnn:
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train(method: str = "bkfac", epochs: int = 3, batch_size: int = 64, lr: float = 0.05, seed: int = 0,
          cnn: bool = False, optimizer: bool = False):
    """Train on digits; returns (per-epoch train losses, test accuracies, the KFAC)."""
    (Xt, yt), (Xv, yv) = digits(seed)
    torch.manual_seed(seed)
    model = model_for(cnn)
    if optimizer:
        opt = KFACOptimizer(model, "sgd", lr=lr, base_options={"momentum": 0.9}, method=method, rank=32, kl_clip=1e-3)
        kfac = opt.kfac
    else:
        kfac = KFAC(model, method, rank=32, kl_clip=1e-3, lr=lr)  # line 1
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    for _ in range(epochs):
        perm = torch.randperm(Xt.shape[0], generator=gen)
        total, count = 0.0, 0
        for i in range(0, Xt.shape[0] - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(Xt[idx]), yt[idx])
            loss.backward()
            if not optimizer:
                kfac.step()  # line 2: precondition .grad in place
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        losses.append(total / count)
        model.eval()
        with torch.no_grad():
            accs.append(float((model(Xv).argmax(dim=1) == yv).float().mean()))
        model.train()
    return losses, accs, kfac


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bkfac")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cnn", action="store_true")
    parser.add_argument("--optimizer", action="store_true", help="use KFACOptimizer instead of KFAC + SGD")
    args = parser.parse_args()
    losses, accs, kfac = train(args.method, args.epochs, cnn=args.cnn, optimizer=args.optimizer)
    for e, (loss, acc) in enumerate(zip(losses, accs), 1):
        print(f"epoch {e}: train loss {loss:.4f}  test accuracy {acc:.4f}")
    print(kfac.summary())


if __name__ == "__main__":
    main()
