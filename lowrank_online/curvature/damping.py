"""The damping policy: one function for every method family.

Each family describes the factors it damps by a :class:`Spectrum` (largest eigenvalue, trace
of what is applied, dimension) and receives one damping per factor, so the three modes mean
the same thing everywhere:

* ``"relative"`` (paper 001, Sec. 6): ``lambda_i = phi * lambda_max(F_i)`` on each factor;
* ``"pi"`` (Martens & Grosse 2015, Sec. 6.3; paper 002, Sec. 2.2): a total Tikhonov damping
  ``gamma`` split over two factors as ``pi sqrt(gamma)`` and ``sqrt(gamma) / pi`` with
  ``pi^2 = (tr F_1 / d_1) / (tr F_2 / d_2)``; a single spectrum (EKFAC's) takes ``gamma``;
* ``"absolute"``: ``lambda_i = value`` on each factor.

A gradient floor (``gradient_damping = c > 0``) then raises the dampings of a layer together
(their ratio kept) until their product is at least ``c |grad|_F^2``: the empirical Fisher of a
batch satisfies ``E[vec(grad_i) vec(grad_i)^T] >= vec(grad) vec(grad)^T``, so ``|grad|_F^2``
is a lower bound on the largest curvature the batch's own gradients carry. When the model's
(Monte Carlo) Fisher has shrunk below it, late in training or on confidently misclassified
samples, the relative damping shrinks with the Fisher and the step ``(F + lambda)^{-1} grad``
grows without bound; the floor keeps it in proportion to the gradient.

Trace convention: the trace of the matrix the solve actually uses, i.e. of the applied
representation with its continued tail when spectrum continuation is on (paper 001,
Sec. 3.5), and of the full factor for full-rank representations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["MODES", "Damping", "Spectrum", "factor_dampings"]

MODES = ("relative", "pi", "absolute")


class Damping(NamedTuple):
    """The damping parameters of one step: the mode's ``value`` and the gradient floor's ``c``,
    both already multiplied by any Levenberg-Marquardt scale."""

    value: float
    gradient: float = 0.0

    def floor(self, grad_sq: float) -> float:
        """The lower bound of the dampings' product for a gradient of squared norm ``grad_sq``."""
        return self.gradient * grad_sq


class Spectrum(NamedTuple):
    """What the damping policy needs to know of one factor."""

    top: float  # largest eigenvalue
    trace: float  # trace of the applied matrix (continued tail included)
    dim: int


def factor_dampings(mode: str, value: float, spectra: Sequence[Spectrum], *, floor: float,
                    total_floor: float = 0.0) -> tuple[float, ...]:
    """One damping per factor of ``spectra`` under ``mode``; each at least ``floor``, and their
    product at least ``total_floor`` (the gradient floor).

    For two factors the order is (input side ``A``, output side ``Gamma``), which fixes the
    side that ``pi`` multiplies.

    Examples
    --------
    >>> from lowrank_online.curvature.damping import Spectrum, factor_dampings
    >>> A, G = Spectrum(top=4.0, trace=8.0, dim=4), Spectrum(top=1.0, trace=1.0, dim=2)
    >>> factor_dampings("relative", 0.1, [A, G], floor=1e-8)
    (0.4, 0.1)
    >>> factor_dampings("pi", 0.01, [A, G], floor=1e-8)  # pi = sqrt((8/4) / (1/2)) = 2
    (0.2, 0.05)
    >>> factor_dampings("relative", 0.5, [A, G], floor=1e-8, total_floor=4.0)  # (2, 0.5), raised 2x
    (4.0, 1.0)
    """
    if mode == "relative":
        lam = [value * s.top for s in spectra]
    elif mode == "absolute":
        lam = [value] * len(spectra)
    elif mode == "pi":
        if len(spectra) == 1:
            lam = [value]
        elif len(spectra) == 2:
            first, second = (s.trace / s.dim if s.dim else 0.0 for s in spectra)
            pi = math.sqrt(first / second) if first > 0.0 and second > 0.0 else 1.0
            root = math.sqrt(value)
            lam = [pi * root, root / pi]
        else:
            raise ValueError(f"the pi split is defined for one or two factors, got {len(spectra)}")
    else:
        raise ValueError(f"`damping_mode` must be one of {list(MODES)}, got {mode!r}")
    lam = [max(x, floor) for x in lam]
    product = math.prod(lam)
    if product < total_floor:
        grow = (total_floor / product) ** (1.0 / len(lam))
        lam = [x * grow for x in lam]
    return tuple(lam)


def squared_norm(grad: Any, xp: Any) -> float:
    """``|grad|_F^2`` of a layer's gradient (for the gradient floor)."""
    return float(xp.sum(grad * grad))


def factored_squared_norm(G: Any, A: Any, xp: Any) -> float:
    """``|G^T A|_F^2 = sum((G G^T) * (A A^T))`` without forming the ``d_out x d_in`` gradient."""
    return float(xp.sum((G @ G.T) * (A @ A.T)))
