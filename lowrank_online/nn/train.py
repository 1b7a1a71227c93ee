"""Training loop: SGD / Adam, optionally preconditioned by a K-FAC-family curvature.

Randomness is a pure function of ``(seed, epoch)`` (batch order) and ``(seed, step)`` (Monte
Carlo Fisher targets), so a run resumed from :func:`save_training_state` at an epoch boundary
reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _validate, checkpoint
from ..curvature import KFACPreconditioner
from .data import Dataset, batches
from .losses import Loss, get_loss
from .mlp import MLP
from .optim import SGD, Adam

__all__ = ["History", "evaluate", "load_training_state", "save_training_state", "train"]


@dataclass
class History:
    """Per-epoch record of a run (times in seconds, cumulative ``wall`` since the start)."""

    label: str
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    curvature_time: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    steps: int = 0

    def time_to(self, accuracy: float) -> float | None:
        """Wall time at the end of the first epoch whose test accuracy reached ``accuracy``."""
        for acc, t in zip(self.test_accuracy, self.wall, strict=True):
            if acc >= accuracy:
                return t
        return None

    def epochs_to(self, accuracy: float) -> int | None:
        for acc, e in zip(self.test_accuracy, self.epoch, strict=True):
            if acc >= accuracy:
                return e
        return None


def evaluate(model: MLP, loss: Loss, X: Any, y: Any, batch_size: int = 2048) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(X, y)``, in batches."""
    xp = model.xp
    n = X.shape[0]
    total, correct = 0.0, 0.0
    for i in range(0, n, batch_size):
        stop = min(i + batch_size, n)
        z = model.forward(X[i:stop, ...], store=False)
        yb = y[i:stop, ...]
        m = z.shape[0]
        total += float(loss.value(z, yb, xp)) * m
        correct += loss.accuracy(z, yb, xp) * m
    return total / n, correct / n


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False)


def train(
    model: MLP,
    data: Dataset,
    *,
    loss: str | Loss = "softmax",
    optimizer: SGD | Adam | None = None,
    preconditioner: KFACPreconditioner | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    fisher: str = "mc",
    factored: bool = False,
    seed: int = 0,
    start_epoch: int = 0,
    target_accuracy: float | None = None,
    stop_at_target: bool = False,
    label: str | None = None,
    progress: bool = False,
    history: History | None = None,
    on_epoch: Any = None,
) -> History:
    """Train ``model`` on ``data`` (already in the model's namespace / device / dtype).

    Each step: forward, backward with the data targets (the gradient); on statistics steps
    of the preconditioner, a second backward with targets sampled from the model
    (``fisher="mc"``, true Fisher) or the data targets' statistics (``"empirical"``), fed to
    ``preconditioner.update``; then the preconditioned directions (``factored=True`` uses the
    linear-time application of paper 001 Alg. 8), KL-clipping if configured, and the optimizer
    step; with ``damping_adaptation="lm"`` one more forward pass measures the step's loss change
    for :meth:`~lowrank_online.curvature.KFACPreconditioner.adapt_damping`. Curvature work
    (statistics pass, factor updates, inverse updates, application, damping adaptation) is
    timed separately and reported as ``curvature_time``. ``on_epoch(history)`` is called after
    every epoch (the command line prints its row there).
    """
    xp = model.xp
    loss = get_loss(loss)
    if fisher not in ("mc", "empirical"):
        raise ValueError(f"`fisher` must be 'mc' or 'empirical', got {fisher!r}")
    optimizer = optimizer if optimizer is not None else SGD()
    names = model.layer_names
    hist = (
        history
        if history is not None
        else History(label or (preconditioner.method if preconditioner else optimizer.name))
    )
    n = data.X_train.shape[0]
    step = hist.steps
    wall = hist.wall[-1] if hist.wall else 0.0
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        curv = 0.0
        losses = []
        for idx in _progress(batches(n, batch_size, epoch, seed), progress, f"epoch {epoch + 1}/{epochs}"):
            sel = xp.asarray(idx, device=model.device)
            Xb, yb = xp.take(data.X_train, sel, axis=0), xp.take(data.y_train, sel, axis=0)
            z = model.forward(Xb)
            losses.append(loss.value(z, yb, xp))
            stats = model.backward(loss.gradient(z, yb, xp))
            grads = [st.grad for st in stats]
            if preconditioner is None:
                directions = grads
            else:
                t0 = time.perf_counter()
                if preconditioner.wants_statistics():
                    fstats = stats
                    if fisher == "mc":
                        sampled = loss.sample(z, np.random.default_rng([seed, step]), xp)
                        fstats = model.backward(loss.gradient(z, sampled, xp))
                    for name, st in zip(names, fstats, strict=True):
                        preconditioner.update(name, st.a, st.g)
                if factored:
                    raw = []
                    for name, st in zip(names, stats, strict=True):
                        G_t, A_t = preconditioner.precondition_factored(name, st.g / st.g.shape[0], st.a)
                        raw.append(G_t.T @ A_t)
                else:
                    raw = [preconditioner.precondition(name, g) for name, g in zip(names, grads, strict=True)]
                scale = preconditioner.clip_scale(raw, grads, optimizer.lr)
                directions = raw if scale == 1.0 else [d * scale for d in raw]
                curv += time.perf_counter() - t0
            optimizer.step(model, directions)
            if preconditioner is not None:
                t0 = time.perf_counter()
                if preconditioner.config.damping_adaptation == "lm":
                    # Levenberg-Marquardt: the loss change the step achieved on its own batch
                    # (one more forward pass) against the quadratic model's prediction.
                    after = loss.value(model.forward(Xb, store=False), yb, xp)
                    predicted = preconditioner.predicted_change(raw, grads, optimizer.lr * scale)
                    preconditioner.adapt_damping(float(after) - float(losses[-1]), predicted)
                preconditioner.step()
                curv += time.perf_counter() - t0
            step += 1
        train_loss = float(xp.mean(xp.stack(losses))) if losses else float("nan")
        elapsed = time.perf_counter() - t_epoch
        test_loss, test_acc = evaluate(model, loss, data.X_test, data.y_test)
        wall += elapsed
        hist.epoch.append(epoch + 1)
        hist.train_loss.append(train_loss)
        hist.test_loss.append(test_loss)
        hist.test_accuracy.append(test_acc)
        hist.epoch_time.append(elapsed)
        hist.curvature_time.append(curv)
        hist.wall.append(wall)
        hist.steps = step
        if on_epoch is not None:
            on_epoch(hist)
        if stop_at_target and target_accuracy is not None and test_acc >= target_accuracy:
            break
    return hist


def save_training_state(file: Any, model: MLP, optimizer: SGD | Adam, preconditioner: KFACPreconditioner | None,
                        epoch: int, history: History | None = None) -> None:
    """Checkpoint a run at an epoch boundary as one ``.npz`` (no pickle)."""
    state: dict[str, Any] = {
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "steps": history.steps if history is not None else 0,
    }
    if preconditioner is not None:
        state["preconditioner"] = preconditioner.state_dict()
    checkpoint.save_state(file, state)


def load_training_state(file: Any, model: MLP, optimizer: SGD | Adam,
                        preconditioner: KFACPreconditioner | None) -> tuple[int, int]:
    """Restore a checkpoint into freshly constructed objects; returns ``(epoch, steps)``."""
    state = checkpoint.load_state(file)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"], model)
    if preconditioner is not None:
        if "preconditioner" not in state:
            raise ValueError("the checkpoint holds no preconditioner state")
        preconditioner.load_state_dict(state["preconditioner"], xp=model.xp, device=model.device)
    return _validate.check_int(int(state["epoch"]), "epoch", minimum=0), int(state["steps"])
