"""Datasets that install with their data (nothing is downloaded at run time).

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).
* :func:`mlp_layer_statistics`: the per-sample statistics ``(a, g)`` of one layer of a random
  MLP, for studies of the Fisher approximations on a single block.
* ``teacher-student``: a synthetic classification problem with a **wide** first layer: inputs
  with a decaying covariance spectrum, labels from a random linear teacher on a latent signal.
  With input width ``d_in`` far above ``rank + batch``, the regime where B-updates pay off
  (paper 001, Sec. 3.5).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import _validate

__all__ = ["Dataset", "load_dataset", "mlp_layer_statistics"]


class Dataset(NamedTuple):
    name: str
    X_train: Any
    y_train: Any
    X_test: Any
    y_test: Any
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def to(self, xp: Any, device: Any = None, dtype: str = "float64") -> "Dataset":
        """The same data in another namespace / device / float dtype (labels as int64)."""

        def move(a: np.ndarray, floating: bool) -> Any:
            a = np.ascontiguousarray(a, dtype=np.dtype(dtype) if floating else np.int64)
            return xp.asarray(a, device=device) if device is not None else xp.asarray(a)

        return Dataset(self.name, move(self.X_train, True), move(self.y_train, False),
                       move(self.X_test, True), move(self.y_test, False), self.n_classes)


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple:
    order = rng.permutation(X.shape[0])
    n_test = int(round(test_fraction * X.shape[0]))
    test, train = order[:n_test], order[n_test:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0) + 1e-8
    return (X[train] - mean) / std, y[train], (X[test] - mean) / std, y[test]


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's digits, standardised, 75/25 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised without the extra
        raise ImportError("the digits dataset needs scikit-learn (pip install 'lowrank_online[demo]')") from err
    raw = load_digits()
    parts = _split(raw.data.astype(np.float64), raw.target.astype(np.int64), 0.25, np.random.default_rng(seed))
    return Dataset("digits", *parts, 10)


def teacher_student(
    n_train: int = 8192, n_test: int = 2048, d_in: int = 1024, n_classes: int = 10, latent: int = 64, seed: int = 0
) -> Dataset:
    """Labels of a random linear teacher on a ``latent``-dimensional signal with a power-law
    spectrum, carried by the ``d_in``-dimensional inputs along random orthonormal directions,
    plus isotropic noise. The student (an MLP) sees only the inputs; the first-layer K-factor
    has a decaying spectrum of ``latent`` directions over a noise floor, as real activations
    do, and ``d_in`` is far above ``rank + batch``."""
    for value, name in (
        (n_train, "n_train"),
        (n_test, "n_test"),
        (d_in, "d_in"),
        (n_classes, "n_classes"),
        (latent, "latent"),
    ):
        _validate.check_int(value, name, minimum=1)
    latent = min(latent, d_in)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    basis, _ = np.linalg.qr(rng.standard_normal((d_in, latent)))
    z = rng.standard_normal((n, latent)) * np.arange(1, latent + 1) ** -0.5
    X = z @ basis.T * np.sqrt(d_in / latent) + 0.05 * rng.standard_normal((n, d_in))
    W = rng.standard_normal((n_classes, latent))
    y = np.argmax(z @ W.T, axis=1).astype(np.int64)
    parts = _split(X, y, n_test / n, rng)
    return Dataset("teacher-student", *parts, n_classes)


def load_dataset(name: str, *, seed: int = 0, **kwargs: Any) -> Dataset:
    """``"digits"`` or ``"teacher-student"`` (keyword sizes are passed on)."""
    if name == "digits":
        return digits(seed)
    if name in ("teacher-student", "synthetic"):
        return teacher_student(seed=seed, **kwargs)
    raise ValueError(f"`data` must be 'digits' or 'teacher-student', got {name!r}")


def batches(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Deterministic shuffled mini-batch indices of one epoch (a function of (seed, epoch))."""
    _validate.check_int(batch_size, "batch_size", minimum=1)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def mlp_layer_statistics(sizes: tuple[int, ...], n: int, layer: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(a, g)`` of one dense layer of a random tanh/softmax MLP (NumPy, float64).

    Inputs ``n x sizes[0]`` and weights are Gaussian; targets are sampled from the model's own
    softmax (the Monte-Carlo Fisher), so ``(1/n) sum_t (g_t a_t^T)^{(x)2}`` estimates the Fisher
    block of ``layer``. ``a`` carries the bias column; ``g`` is the gradient of the loss with
    respect to the layer's pre-activations.

    Examples
    --------
    >>> from lowrank_online.nn import mlp_layer_statistics
    >>> a, g = mlp_layer_statistics((6, 5, 3), 16, layer=1)
    >>> a.shape, g.shape
    ((16, 6), (16, 3))
    """
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((o, i + 1)) / np.sqrt(i + 1) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    h = rng.standard_normal((n, sizes[0]))
    inputs = []
    for k, W in enumerate(weights):
        inputs.append(np.concatenate([h, np.ones((n, 1))], axis=1))  # the bias column
        s = inputs[-1] @ W.T
        h = np.tanh(s) if k < len(weights) - 1 else s
    p = np.exp(h - h.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.minimum((p.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), p.shape[1] - 1)
    g = p.copy()
    g[np.arange(n), y] -= 1.0  # the gradient of -log softmax(s)_y with respect to the logits
    for k in range(len(weights) - 1, layer, -1):
        t = inputs[k][:, :-1]  # the tanh outputs that feed layer k
        g = (g @ weights[k][:, :-1]) * (1.0 - t * t)
    return inputs[layer], g

