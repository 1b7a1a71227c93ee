"""Trace-restricted Kronecker factors (TKFAC) and their damping.

Paper 003 (Gao et al., TKFAC): Thm 4.1 with the normalisation tr Φ = tr Ψ = 1, eq. (4.9);
damping eq. (5.15) and the trace-restricted damping eq. (5.16). Written in the row-major
convention of ``docs/conventions.rst`` (``F ≈ δ Ψ ⊗ Φ``, gradient side on the left).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .. import _array, _linalg, _validate
from . import _checks
from .kronsum import KronSum

__all__ = ["TKFACFactors", "tkfac_factors"]


class TKFACFactors(NamedTuple):
    r"""TKFAC's ``F ≈ δ Ψ ⊗ Φ`` with ``tr Φ = tr Ψ = 1`` (paper 003, eq. (4.9)).

    Attributes
    ----------
    delta : array, shape ()
        ``δ = E[|a|^2 |g|^2] = tr F``.
    Phi : array, shape (d_a, d_a)
        Activation-side factor ``E[|g|^2 a a^T] / δ`` (the paper's Φ).
    Psi : array, shape (d_g, d_g)
        Gradient-side factor ``E[|a|^2 g g^T] / δ`` (the paper's Ψ).
    """

    delta: Any
    Phi: Any
    Psi: Any

    def to_kronsum(self) -> KronSum:
        """``δ Ψ ⊗ Φ`` as a one-term :class:`KronSum` (left = ``δ Ψ``, right = ``Φ``)."""
        return KronSum((self.delta * self.Psi,), (self.Phi,))

    def damped(self, damping: float) -> KronSum:
        r"""Damped factors of eq. (5.15): ``(sqrt(δ) Ψ + sqrt(λ) I) ⊗ (sqrt(δ) Φ + sqrt(λ) I)``.

        The Kronecker-factored stand-in for ``δ Ψ ⊗ Φ + λ I`` (Martens & Grosse 2015);
        invert it with :class:`KronSumInverse` or factor by factor.
        """
        lam = _validate.check_real(damping, "damping", low=0.0)
        xp = _array.namespace(("Phi", self.Phi), ("Psi", self.Psi))
        root = xp.sqrt(self.delta)
        left = root * self.Psi + math.sqrt(lam) * _checks.identity_like(self.Psi, xp)
        right = root * self.Phi + math.sqrt(lam) * _checks.identity_like(self.Phi, xp)
        return KronSum((left,), (right,))

    def damped_trace(self, nu: float) -> KronSum:
        r"""Trace-restricted damping of eq. (5.16): with ``δ~ = max(ν, δ)``,
        ``(sqrt(δ~) Ψ + δ~/d_g I) ⊗ (sqrt(δ~) Φ + δ~/d_a I)``.

        The paper proposes it for convolutional layers, where δ can become tiny; ``ν`` is a
        lower bound on δ and the damping needs no tuning.
        """
        nu = _validate.check_real(nu, "nu", low=0.0, low_open=True)
        xp = _array.namespace(("Phi", self.Phi), ("Psi", self.Psi))
        d_tilde = max(nu, float(self.delta))
        root = math.sqrt(d_tilde)
        left = root * self.Psi + (d_tilde / self.Psi.shape[0]) * _checks.identity_like(self.Psi, xp)
        right = root * self.Phi + (d_tilde / self.Phi.shape[0]) * _checks.identity_like(self.Phi, xp)
        return KronSum((left,), (right,))


def tkfac_factors(a: Any, g: Any, *, check_finite: bool = True) -> TKFACFactors:
    r"""Trace-restricted Kronecker factors ``(δ, Φ, Ψ)`` of a fully-connected layer's Fisher block.

    Parameters
    ----------
    a : array, shape (N, d_a)
        Per-sample layer inputs (bias column included by the caller).
    g : array, shape (N, d_g)
        Per-sample pre-activation gradients.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    TKFACFactors
        ``delta`` (0-d array), ``Phi`` (``d_a x d_a``), ``Psi`` (``d_g x d_g``), symmetric
        positive semi-definite with unit trace; ``F ≈ delta Psi ⊗ Phi`` (row-major convention).

    Raises
    ------
    ValueError, TypeError
        On bad shapes, non-finite values, ``F = 0`` (every sample has ``a_t = 0`` or
        ``g_t = 0``), where the factors are undefined, or a ``delta`` beyond the dtype's range.

    Notes
    -----
    Paper 003, eq. (4.9), with ``Λ = a a^T`` and ``Γ = g g^T``:

    .. math:: \delta = E[\operatorname{tr}\Lambda \operatorname{tr}\Gamma], \quad
              \Phi = \frac{E[\operatorname{tr}(\Gamma)\,\Lambda]}{\delta}, \quad
              \Psi = \frac{E[\operatorname{tr}(\Lambda)\,\Gamma]}{\delta}.

    Then ``tr(δ Ψ ⊗ Φ) = δ tr Ψ tr Φ = δ = E[|a|^2 |g|^2] = tr F`` exactly in exact arithmetic;
    here the traces come out equal to rounding (the factors are weighted Gram matrices whose
    traces are the same weighted sums as δ). The paper writes ``F = E[Λ ⊗ Γ] ≈ δ Φ ⊗ Ψ`` with
    column-major ``vec``; in the row-major convention the factors exchange sides. ``Φ`` and
    ``Ψ`` are the partial traces of F over the other factor, so ``R(F)^T vec(I)`` and
    ``R(F) vec(I)``: one half-step of the power SVD from the identity. TKFAC is exact when F
    is a Kronecker product; in general it is not optimal in Frobenius norm (compare
    :func:`kpsvd`). Cost ``2 N (d_a^2 + d_g^2)`` flops, memory ``O(N (d_a + d_g))`` besides
    the factors.

    Scale: ``a`` and ``g`` are first divided by powers of two (exact) that bring their
    largest entries into [1/2, 1), so the fourth powers ``|a_t|^2 |g_t|^2`` cannot over- or
    underflow; ``Phi`` and ``Psi`` are scale-free and keep full relative accuracy for any
    representable statistics, and ``delta`` is scaled back (a ``ValueError`` if it overflows
    the dtype; below the dtype's range it is rounded to a subnormal or zero, its nearest value).
    Cost: two reductions and a copy of each of ``a`` and ``g``.

    References
    ----------
    .. [1] K. Gao, X. Liu, Z. Huang, M. Wang, Z. Wang, D. Xu, F. Yu, "A trace-restricted
       Kronecker-factored approximation to natural gradient", AAAI 2021, eq. (4.9),
       (5.15), (5.16).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import tkfac_factors
    >>> a = xp.asarray([[1.0, 0.0], [1.0, 2.0]]); g = xp.asarray([[1.0], [3.0]])
    >>> f = tkfac_factors(a, g)
    >>> float(f.delta), float(xp.linalg.trace(f.Phi)), float(xp.linalg.trace(f.Psi))
    (23.0, 1.0, 1.0)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp, a, g = _validate.check_statistics(a, g, check_finite=check_finite)
    n = a.shape[0]
    # Phi and Psi do not depend on the scales of a and g, and delta scales as their squares:
    # a and g are normalised by powers of two (exact) so that |a|^2 |g|^2, a fourth power,
    # neither overflows nor underflows, and delta is scaled back at the end.
    (a, ea), (g, eg) = _checks.normalized(a, "a", xp), _checks.normalized(g, "g", xp)
    na = xp.sum(a * a, axis=1)
    ng = xp.sum(g * g, axis=1)
    w = na * ng
    total = xp.sum(w)
    if not float(total) > 0.0:
        raise ValueError("the Fisher block is zero (every sample has a = 0 or g = 0); TKFAC is undefined")
    Phi = _linalg.symmetrize(a.T @ (ng[:, None] * a)) / total
    Psi = _linalg.symmetrize(g.T @ (na[:, None] * g)) / total
    try:
        delta = math.ldexp(float(total) / n, 2 * (ea + eg))
    except OverflowError:
        delta = math.inf
    if delta > float(xp.finfo(a.dtype).max):
        raise ValueError(
            f"delta = E[|a|^2 |g|^2] = tr F overflows {_array.dtype_name(a.dtype)} (about 2^{2 * (ea + eg)} "
            "times the normalised statistics'); rescale `a` or `g`"
        )
    return TKFACFactors(xp.asarray(delta, dtype=a.dtype, device=_array.device(a)), Phi, Psi)

