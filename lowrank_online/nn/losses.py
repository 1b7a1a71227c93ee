"""Losses as negative log-likelihoods, with sampling from the model's predictive distribution.

Each loss is ``ell(z, y) = -log p(y | z)`` for network outputs ``z``. ``gradient`` returns the
per-sample derivative ``d ell_t / d z_t`` (not divided by the batch size), the quantity that
back-propagates into the K-factor statistics. ``sample`` draws targets ``y ~ p(y | z)``, the
Monte-Carlo true Fisher of paper 001 eq. (2); the data targets give the empirical Fisher.
Randomness is drawn on the host with NumPy and moved to the device (same draws on every
backend).
"""

from __future__ import annotations

from typing import Any

import array_api_extra as xpx
import numpy as np

from .. import _array

__all__ = ["BinaryCrossEntropy", "Loss", "SoftmaxCrossEntropy", "SquaredError", "get_loss"]


class Loss:
    """Interface: ``value``, ``gradient``, ``sample``, ``predict``, ``accuracy``."""

    name = "loss"

    def value(self, z: Any, y: Any, xp: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def gradient(self, z: Any, y: Any, xp: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, z: Any, rng: np.random.Generator, xp: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def accuracy(self, z: Any, y: Any, xp: Any) -> float:  # pragma: no cover - interface
        raise NotImplementedError


def _log_softmax(z: Any, xp: Any) -> Any:
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


class SoftmaxCrossEntropy(Loss):
    """Categorical likelihood of integer labels ``y`` under ``softmax(z)``."""

    name = "softmax"

    def value(self, z: Any, y: Any, xp: Any) -> Any:
        logp = _log_softmax(z, xp)
        return -xp.mean(xp.sum(logp * xpx.one_hot(y, z.shape[1], dtype=z.dtype, xp=xp), axis=1))

    def gradient(self, z: Any, y: Any, xp: Any) -> Any:
        return xp.exp(_log_softmax(z, xp)) - xpx.one_hot(y, z.shape[1], dtype=z.dtype, xp=xp)

    def sample(self, z: Any, rng: np.random.Generator, xp: Any) -> Any:
        # inverse-CDF sampling with host uniforms: counts of cumulative probabilities below u
        probs = xp.exp(_log_softmax(z, xp))
        cdf = xp.cumulative_sum(probs, axis=1)
        u = xp.asarray(rng.random((z.shape[0], 1)), dtype=z.dtype, device=_array.device(z))
        idx = xp.sum(xp.astype(cdf < u, xp.int64), axis=1)
        return xp.clip(idx, max=z.shape[1] - 1)

    def predict(self, z: Any, xp: Any) -> Any:
        return xp.argmax(z, axis=1)

    def accuracy(self, z: Any, y: Any, xp: Any) -> float:
        return float(xp.mean(xp.astype(self.predict(z, xp) == y, z.dtype)))


class SquaredError(Loss):
    """Gaussian likelihood with unit variance: ``ell = |z - y|^2 / 2``."""

    name = "squared"

    def value(self, z: Any, y: Any, xp: Any) -> Any:
        return xp.mean(xp.sum((z - y) ** 2, axis=1)) / 2

    def gradient(self, z: Any, y: Any, xp: Any) -> Any:
        return z - y

    def sample(self, z: Any, rng: np.random.Generator, xp: Any) -> Any:
        return z + _array.standard_normal(rng, tuple(z.shape), z.dtype, xp, _array.device(z))

    def predict(self, z: Any, xp: Any) -> Any:
        return z

    def accuracy(self, z: Any, y: Any, xp: Any) -> float:
        """Coefficient of determination R^2 (regression has no accuracy)."""
        resid = xp.sum((z - y) ** 2)
        total = xp.sum((y - xp.mean(y, axis=0)) ** 2)
        return float(1.0 - resid / total)


class BinaryCrossEntropy(Loss):
    """Independent Bernoulli likelihoods of targets in {0, 1} under ``sigmoid(z)``."""

    name = "binary"

    def value(self, z: Any, y: Any, xp: Any) -> Any:
        # softplus(z) - y z, written to stay finite for large |z|
        softplus = xp.maximum(z, xp.zeros_like(z)) + xp.log1p(xp.exp(-xp.abs(z)))
        return xp.mean(xp.sum(softplus - y * z, axis=1))

    def gradient(self, z: Any, y: Any, xp: Any) -> Any:
        return 1.0 / (1.0 + xp.exp(-z)) - y

    def sample(self, z: Any, rng: np.random.Generator, xp: Any) -> Any:
        u = xp.asarray(rng.random(tuple(z.shape)), dtype=z.dtype, device=_array.device(z))
        return xp.astype(u < 1.0 / (1.0 + xp.exp(-z)), z.dtype)

    def predict(self, z: Any, xp: Any) -> Any:
        return xp.astype(z > 0, z.dtype)

    def accuracy(self, z: Any, y: Any, xp: Any) -> float:
        return float(xp.mean(xp.astype(self.predict(z, xp) == y, z.dtype)))


_LOSSES = {cls.name: cls for cls in (SoftmaxCrossEntropy, SquaredError, BinaryCrossEntropy)}


def get_loss(name: str | Loss) -> Loss:
    """A loss by name: ``"softmax"``, ``"squared"`` or ``"binary"``."""
    if isinstance(name, Loss):
        return name
    if name not in _LOSSES:
        raise ValueError(f"`loss` must be one of {sorted(_LOSSES)}, got {name!r}")
    return _LOSSES[name]()
