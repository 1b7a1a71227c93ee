"""Per-sample statistics (a, g) of fully-connected layers, and the dense Fisher reference.

* :class:`TinyMLP` -- a small tanh MLP with a softmax output, written in NumPy with a
  hand-written backward pass. Targets are sampled from the model's own predictive
  distribution (Monte-Carlo Fisher, Martens & Grosse 2015), so ``E[g a^T]`` estimates a true
  Fisher block and not the empirical one.
* :func:`random_statistics` -- random activations and gradients that depend on each other
  (so K-FAC is not exact), with a bias column.
* :func:`dense_fisher` -- ``(1/N) sum_t j_t j_t^T`` with ``j_t = np.kron(g_t, a_t)``, the
  row-major flattening of the per-sample weight gradient ``g_t a_t^T``: every Kronecker test
  compares against this, so a convention slip cannot hide.
"""

from __future__ import annotations

import numpy as np


class TinyMLP:
    """``x -> tanh(W_1 [x; 1]) -> ... -> softmax(W_L [h; 1])``, weights ``d_out x (d_in + 1)``."""

    def __init__(self, sizes=(6, 8, 5, 4), seed=0):
        rng = np.random.default_rng(seed)
        self.sizes = tuple(sizes)
        self.weights = [
            rng.standard_normal((d_out, d_in + 1)) / np.sqrt(d_in + 1)
            for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True)
        ]

    def forward(self, X, weights=None):
        """Layer inputs (with bias column) and the output probabilities."""
        weights = self.weights if weights is None else weights
        inputs = []
        h = X
        for i, W in enumerate(weights):
            a = np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)
            inputs.append(a)
            s = a @ W.T
            h = np.tanh(s) if i < len(weights) - 1 else s
        logits = h - h.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return inputs, p / p.sum(axis=1, keepdims=True)

    def loss(self, x, y, weights=None):
        """``-log p(y | x)`` of one sample (for finite-difference checks)."""
        _, p = self.forward(x[None, :], weights)
        return -np.log(p[0, y])

    def statistics(self, n_samples=64, seed=1, X=None):
        """Per-layer ``(a, g)``: inputs with bias column and pre-activation gradients of
        ``-log p(y | x)`` with ``y`` drawn from the model (one row per sample)."""
        rng = np.random.default_rng(seed)
        if X is None:
            X = rng.standard_normal((n_samples, self.sizes[0]))
        inputs, p = self.forward(X)
        u = rng.random(X.shape[0])
        y = np.minimum((p.cumsum(axis=1) < u[:, None]).sum(axis=1), p.shape[1] - 1)
        g = p.copy()
        g[np.arange(X.shape[0]), y] -= 1.0  # d(-log softmax_y)/d logits
        grads = [None] * len(self.weights)
        for i in range(len(self.weights) - 1, -1, -1):
            grads[i] = g
            if i > 0:
                h = inputs[i][:, :-1]  # tanh outputs of layer i - 1
                g = (g @ self.weights[i][:, :-1]) * (1.0 - h * h)
        self.last_targets = y
        self.last_inputs = X
        return list(zip(inputs, grads, strict=True))


def mlp_statistics(layer=1, n_samples=64, sizes=(6, 8, 5, 4), seed=0):
    """``(a, g)`` of one layer of :class:`TinyMLP` (layer 1: ``d_a = 9``, ``d_g = 5``)."""
    return TinyMLP(sizes, seed).statistics(n_samples, seed + 1)[layer]


def random_statistics(n, d_a, d_g, seed=0, bias=True):
    """Random ``(a, g)`` whose gradient scale depends on the activations (K-FAC inexact)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d_a - 1 if bias else d_a)) * np.linspace(1.0, 0.3, d_a - 1 if bias else d_a)
    if bias:
        a = np.concatenate([a, np.ones((n, 1))], axis=1)
    mix = rng.standard_normal((a.shape[1], d_g)) / np.sqrt(d_a)
    g = np.tanh(a @ mix) * (0.5 + a[:, :1] ** 2) + 0.3 * rng.standard_normal((n, d_g))
    return a, g


def dense_fisher(a, g):
    """``(1/N) sum_t kron(g_t, a_t) kron(g_t, a_t)^T`` from per-sample flattened gradients."""
    a, g = np.asarray(a, float), np.asarray(g, float)
    J = np.stack([np.kron(g[t], a[t]) for t in range(a.shape[0])])
    return J.T @ J / a.shape[0]


def rearrange_loops(M, left_shape, right_shape):
    """Van Loan's rearrangement by its definition, block by block (an independent reference).

    Row ``i1 * n1 + j1`` of the result is the row-major vec of block ``(i1, j1)`` of M.
    """
    (m1, n1), (m2, n2) = left_shape, right_shape
    out = np.empty((m1 * n1, m2 * n2))
    for i1 in range(m1):
        for j1 in range(n1):
            block = M[i1 * m2 : (i1 + 1) * m2, j1 * n2 : (j1 + 1) * n2]
            out[i1 * n1 + j1] = block.reshape(-1)
    return out


def kfac_dense(a, g):
    a, g = np.asarray(a, float), np.asarray(g, float)
    n = a.shape[0]
    return np.kron(g.T @ g / n, a.T @ a / n)


def optimal_errors(F, d_g, d_a):
    """Singular values of R(F) and the optimal t-term errors ``sqrt(sum_{i>t} s_i^2)``."""
    s = np.linalg.svd(rearrange_loops(F, (d_g, d_g), (d_a, d_a)), compute_uv=False)
    tails = np.sqrt(np.maximum(np.cumsum((s**2)[::-1])[::-1], 0.0))
    return s, np.append(tails[1:], 0.0)
