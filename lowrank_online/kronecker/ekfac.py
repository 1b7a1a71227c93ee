"""Eigenvalue-corrected K-FAC (EKFAC): optimal diagonal rescaling in the Kronecker eigenbasis.

Paper 004 (George et al.): Sec. 3.2 and Alg. 1 (``s*``, COMPUTESCALINGS, UPDATEPARAMETERS),
App. A (optimality, Thm 2-3), and the running-average variant EKFAC-ra. Written in the
row-major convention of ``docs/conventions.rst``: the Kronecker-factored eigenbasis is
``Q_G ⊗ Q_A`` and ``(Q_G ⊗ Q_A)^T vec(X) = vec(Q_G^T X Q_A)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_extra as xpx

from .. import _array, _backend, _linalg, _validate
from . import _checks

__all__ = ["EKFACFactors", "ekfac_factors", "ekfac_scalings", "ekfac_solve", "ekfac_update"]


class EKFACFactors(NamedTuple):
    r"""EKFAC's ``F ≈ (Q_G ⊗ Q_A) diag(vec(S)) (Q_G ⊗ Q_A)^T``.

    Attributes
    ----------
    basis_g : array, shape (d_g, d_g)
        Orthonormal eigenvectors ``Q_G`` of ``E[g g^T]`` (eigenvalues descending).
    basis_a : array, shape (d_a, d_a)
        Orthonormal eigenvectors ``Q_A`` of ``E[a a^T]``.
    scalings : array, shape (d_g, d_a)
        ``S``, the second moments of the gradients in the eigenbasis.
    """

    basis_g: Any
    basis_a: Any
    scalings: Any

    def to_dense(self) -> Any:
        """The explicit ``(d_g d_a) x (d_g d_a)`` matrix (for tests)."""
        xp = _array.namespace(("basis_g", self.basis_g), ("basis_a", self.basis_a))
        Q = xpx.kron(self.basis_g, self.basis_a, xp=xp)
        return (Q * xp.reshape(self.scalings, (-1,))[None, :]) @ Q.T

    def solve(self, V: Any, *, damping: float, check_finite: bool = True) -> Any:
        """:func:`ekfac_solve` with these factors."""
        check_finite = _validate.check_bool(check_finite, "check_finite")
        return ekfac_solve(V, self.scalings, self.basis_g, self.basis_a, damping=damping, check_finite=check_finite)


def _check_bases(basis_g: Any, basis_a: Any, d_g: int, d_a: int, xp: Any, check_finite: bool) -> None:
    _checks.square(basis_g, "basis_g", xp, check_finite=check_finite, size=d_g)
    _checks.square(basis_a, "basis_a", xp, check_finite=check_finite, size=d_a)


def _projected_moments(a: Any, g: Any, basis_g: Any, basis_a: Any, xp: Any, *, per_sample: bool = True) -> Any:
    """``(1/N) sum_t (Q_G^T g_t)^2 (Q_A^T a_t)^{2T}``: two projections and one GEMM
    (``per_sample=False``: the square of the projected mean gradient instead).

    The moments are fourth powers of the statistics: a and g are normalised by powers of two
    first (exact), so that the products over- or underflow only when the moments themselves
    do, and the result is scaled back; a ``ValueError`` when it overflows the dtype.
    """
    (a, ea), (g, eg) = _checks.normalized(a, "a", xp), _checks.normalized(g, "g", xp)
    if per_sample:
        gh = g @ basis_g
        ah = a @ basis_a
        moments = ((gh * gh).T @ (ah * ah)) / a.shape[0]
    else:
        mean = basis_g.T @ ((g.T @ a) / a.shape[0]) @ basis_a
        moments = mean * mean
    with _array.quiet_floating_point():  # an overflow is seen on the result
        moments = _checks.scaled(moments, 2 * (ea + eg))
    if not _array.all_finite(xp, moments):
        raise ValueError(
            f"the EKFAC scalings overflow {_array.dtype_name(moments.dtype)} (second moments of |g| |a| about "
            f"2^{ea + eg}); rescale `a` or `g`"
        )
    return moments


def ekfac_scalings(a: Any, g: Any, basis_g: Any, basis_a: Any, *, check_finite: bool = True) -> Any:
    r"""EKFAC's optimal diagonal ``s*`` in the Kronecker-factored eigenbasis, in factored form.

    Parameters
    ----------
    a : array, shape (N, d_a)
        Per-sample layer inputs (bias column included by the caller).
    g : array, shape (N, d_g)
        Per-sample pre-activation gradients.
    basis_g : array, shape (d_g, d_g)
        Orthonormal basis ``Q_G`` (normally the eigenvectors of ``E[g g^T]``; orthonormality
        is assumed, not checked).
    basis_a : array, shape (d_a, d_a)
        Orthonormal basis ``Q_A`` (normally the eigenvectors of ``E[a a^T]``).
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    array, shape (d_g, d_a)
        ``S[i, j] = E[(Q_G^T g a^T Q_A)_{ij}^2]``, non-negative.

    Raises
    ------
    ValueError, TypeError
        On bad shapes (including different N in ``a`` and ``g``), non-finite values or dtypes.

    Notes
    -----
    Paper 004, Alg. 1 (COMPUTESCALINGS) and Thm 2: among diagonal matrices ``D``,
    ``|F - (Q_G ⊗ Q_A) D (Q_G ⊗ Q_A)^T|_F`` is minimal for ``D = diag(vec(S))``; since the
    K-FAC eigenvalues ``S_G ⊗ S_A`` are one such diagonal, EKFAC is never worse than K-FAC
    (Thm 3). The per-sample gradient in the eigenbasis is
    ``Q_G^T g_t a_t^T Q_A = (Q_G^T g_t)(Q_A^T a_t)^T``, a rank-one matrix, so its entrywise
    square is ``(Q_G^T g_t)^{∘2} ((Q_A^T a_t)^{∘2})^T`` and

    .. math:: S = \tfrac1N (\hat G \circ \hat G)^T (\hat A \circ \hat A), \qquad
              \hat G = g Q_G,\ \hat A = a Q_A :

    ``2 N (d_a^2 + d_g^2 + d_a d_g)`` flops and ``O(N (d_a + d_g))`` memory; the per-sample
    ``d_g x d_a`` gradients are never formed.

    References
    ----------
    .. [1] T. George, C. Laurent, X. Bouthillier, N. Ballas, P. Vincent, "Fast approximate
       natural gradient descent in a Kronecker-factored eigenbasis", NeurIPS 2018, Sec. 3.2,
       Alg. 1, App. A.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import ekfac_scalings
    >>> a = xp.asarray([[1.0, 2.0], [3.0, 0.0]]); g = xp.asarray([[1.0], [2.0]])
    >>> ekfac_scalings(a, g, xp.eye(1), xp.eye(2))  # E[(g a^T)^2] in the standard basis
    Array([[18.5,  2. ]], dtype=array_api_strict.float64)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp, a, g = _validate.check_statistics(a, g, check_finite=check_finite)
    _array.namespace(("basis_g", basis_g), ("basis_a", basis_a), ("a", a))
    _array.same_device(("basis_g", basis_g), ("basis_a", basis_a), ("a", a))
    _check_bases(basis_g, basis_a, g.shape[1], a.shape[1], xp, check_finite)
    dt = _array.result_dtype(xp, a, basis_g, basis_a)
    a, g, basis_g, basis_a = (_array.astype(M, dt, xp) for M in (a, g, basis_g, basis_a))
    return _projected_moments(a, g, basis_g, basis_a, xp)


def ekfac_factors(a: Any, g: Any, *, check_finite: bool = True) -> EKFACFactors:
    r"""EKFAC from one batch: the eigenbases of K-FAC's factors and ``s*`` in them.

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
    EKFACFactors
        ``basis_g``, ``basis_a`` (eigenvalues descending, the largest-magnitude entry of each
        column positive) and ``scalings`` (``d_g x d_a``).

    Notes
    -----
    Paper 004, Alg. 1: COMPUTEEIGENBASIS (``eigh`` of ``E[g g^T]`` and ``E[a a^T]``, in
    float64 where the device has it) followed by :func:`ekfac_scalings`. Cost
    ``O(N (d_a^2 + d_g^2) + d_a^3 + d_g^3)``. In training, the bases are recomputed every few
    hundred steps while :func:`ekfac_update` tracks the scalings every step.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import ekfac_factors
    >>> a = xp.asarray([[2.0, 0.0], [1.0, 2.0], [0.0, 1.0]]); g = xp.asarray([[1.0], [1.0], [3.0]])
    >>> f = ekfac_factors(a, g)
    >>> round(float(xp.sum(f.scalings)), 12)  # the trace of F is kept: sum(S) = E[|a|^2 |g|^2]
    6.0
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp, a, g = _validate.check_statistics(a, g, check_finite=check_finite)
    n = a.shape[0]
    be = _backend.precision_of(a, xp)
    bases = []
    # The bases do not depend on the scales of a and g: from the normalised statistics, so
    # that g^T g and a^T a cannot over- or underflow.
    an, gn = _checks.normalized(a, "a", xp)[0], _checks.normalized(g, "g", xp)[0]
    for M in ((gn.T @ gn) / n, (an.T @ an) / n):
        _, Q = _linalg.small_eigh(be.to_core(M), be.cxp)
        Q, _ = _linalg.flip_signs(Q * 1.0, be.cxp)
        bases.append(be.from_core(Q))
    return EKFACFactors(bases[0], bases[1], _projected_moments(a, g, bases[0], bases[1], xp))


def ekfac_update(
    scalings: Any,
    a: Any,
    g: Any,
    basis_g: Any,
    basis_a: Any,
    *,
    decay: float = 0.95,
    per_sample: bool = True,
    check_finite: bool = True,
) -> Any:
    r"""Running average of the EKFAC scalings (EKFAC-ra, paper 004 Sec. 3.2 and 4).

    Parameters
    ----------
    scalings : array, shape (d_g, d_a), or None
        The running average ``S_{k-1}`` (non-negative); ``None`` starts it with this batch's
        estimate.
    a : array, shape (N, d_a)
        Per-sample layer inputs of the new batch.
    g : array, shape (N, d_g)
        Per-sample pre-activation gradients of the new batch.
    basis_g, basis_a : arrays
        The (fixed) Kronecker-factored eigenbasis.
    decay : float, optional
        ``rho`` in [0, 1]: ``S_k = rho S_{k-1} + (1 - rho) S_batch``, the convention of
        :class:`~lowrank_online.LowRankEMA`. Default 0.95.
    per_sample : bool, optional
        ``True`` (default): ``S_batch`` is :func:`ekfac_scalings` of the batch (second
        moments of the per-sample gradients). ``False``: the square of the mini-batch mean
        gradient in the eigenbasis, ``(Q_G^T (g^T a / N) Q_A)^{∘2}``, the paper's EKFAC-ra
        statistic.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    array, shape (d_g, d_a)
        The new running average (the input is not modified).

    Notes
    -----
    ``2 N (d_a^2 + d_g^2 + d_a d_g)`` flops with ``per_sample=True``; ``2 N d_a d_g +
    2 d_g d_a (d_a + d_g)`` otherwise. The first batch enters unscaled (``S_0 = S_batch``).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import ekfac_update
    >>> a = xp.asarray([[1.0, 2.0]]); g = xp.asarray([[1.0]])
    >>> s = ekfac_update(None, a, g, xp.eye(1), xp.eye(2))
    >>> ekfac_update(s, 2.0 * a, g, xp.eye(1), xp.eye(2), decay=0.5)
    Array([[ 2.5, 10. ]], dtype=array_api_strict.float64)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    decay = _validate.check_real(decay, "decay", low=0.0, high=1.0)
    if not isinstance(per_sample, bool):
        raise TypeError(f"`per_sample` must be a bool, got {type(per_sample).__name__}")
    xp, a, g = _validate.check_statistics(a, g, check_finite=check_finite)
    _array.namespace(("basis_g", basis_g), ("basis_a", basis_a), ("a", a), ("scalings", scalings))
    _array.same_device(("basis_g", basis_g), ("basis_a", basis_a), ("a", a), ("scalings", scalings))
    d_g, d_a = g.shape[1], a.shape[1]
    _check_bases(basis_g, basis_a, d_g, d_a, xp, check_finite)
    batch = _projected_moments(a, g, basis_g, basis_a, xp, per_sample=per_sample)
    if scalings is None:
        return batch
    _validate.check_array(scalings, "scalings", xp, ndim=2, finite=check_finite)
    if tuple(scalings.shape) != (d_g, d_a):
        raise ValueError(f"`scalings` must have shape {(d_g, d_a)}, got {tuple(scalings.shape)}")
    _check_nonnegative(scalings, xp)
    return decay * scalings + (1.0 - decay) * batch


def _check_nonnegative(scalings: Any, xp: Any) -> float:
    """The smallest scaling; ``ValueError`` naming ``scalings`` when it is negative."""
    low = float(xp.min(scalings)) if scalings.shape[0] * scalings.shape[1] else 0.0
    if low < 0.0:
        raise ValueError(f"`scalings` must be non-negative (second moments), got minimum {low:.3g}")
    return low


def ekfac_solve(
    V: Any,
    scalings: Any,
    basis_g: Any,
    basis_a: Any,
    *,
    damping: float,
    check_finite: bool = True,
) -> Any:
    r"""EKFAC's preconditioned solve ``Q_G [(Q_G^T V Q_A) / (S + λ)] Q_A^T``.

    Parameters
    ----------
    V : array, shape (d_g, d_a), (..., d_g, d_a) or (d_g d_a,)
        Gradient(s) of the weight (``d_g x d_a``, outputs x inputs) or their row-major
        ``vec``.
    scalings : array, shape (d_g, d_a)
        Non-negative EKFAC scalings ``S``.
    basis_g, basis_a : arrays, shapes (d_g, d_g) and (d_a, d_a)
        Orthonormal Kronecker-factored eigenbasis.
    damping : float
        ``λ >= 0`` added to every scaling; ``S + λ`` must be positive.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    array
        ``(F_EKFAC + λ I)^{-1} vec(V)`` in the layout of ``V``.

    Raises
    ------
    ValueError, TypeError
        On bad shapes, negative scalings, ``S + λ`` not positive, or non-finite values.

    Notes
    -----
    Paper 004, Alg. 1 (UPDATEPARAMETERS): project to the eigenbasis, divide elementwise,
    project back. Exact inverse of the damped EKFAC matrix (its eigenvalues are ``S + λ``).
    Cost ``4 (d_g^2 d_a + d_g d_a^2)`` flops per right-hand side.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import ekfac_solve
    >>> S = xp.asarray([[1.0, 3.0]])
    >>> ekfac_solve(xp.asarray([[2.0, 4.0]]), S, xp.eye(1), xp.eye(2), damping=1.0)
    Array([[1., 1.]], dtype=array_api_strict.float64)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    names = (("V", V), ("scalings", scalings), ("basis_g", basis_g), ("basis_a", basis_a))
    xp = _array.namespace(*names)
    _array.same_device(*names)
    _validate.check_array(V, "V", xp, ndim=tuple(range(1, 8)), finite=check_finite)
    _validate.check_array(scalings, "scalings", xp, ndim=2, finite=check_finite)
    # The bases fix the sizes; a scalings array that disagrees is named as the culprit.
    _checks.square(basis_g, "basis_g", xp, check_finite=check_finite)
    _checks.square(basis_a, "basis_a", xp, check_finite=check_finite)
    d_g, d_a = basis_g.shape[0], basis_a.shape[0]
    if tuple(scalings.shape) != (d_g, d_a):
        raise ValueError(f"`scalings` must have shape {(d_g, d_a)} (the sizes of `basis_g` and `basis_a`), "
                         f"got {tuple(scalings.shape)}")
    damping = _validate.check_real(damping, "damping", low=0.0)
    low = _check_nonnegative(scalings, xp)
    if not low + damping > 0.0:
        raise ValueError("`scalings` + `damping` must be positive; pass damping > 0")
    vector = V.ndim == 1
    if vector:
        if V.shape[0] != d_g * d_a:
            raise ValueError(f"`V` has length {V.shape[0]}, expected {d_g * d_a} = {d_g} x {d_a}")
        X = xp.reshape(V, (d_g, d_a))
    else:
        if tuple(V.shape[-2:]) != (d_g, d_a):
            raise ValueError(f"`V` must have shape (..., {d_g}, {d_a}), got {tuple(V.shape)}")
        X = V
    Y = xp.matmul(xp.matmul(basis_g.T, X), basis_a) / (scalings + damping)
    X = xp.matmul(xp.matmul(basis_g, Y), basis_a.T)
    return xp.reshape(X, (d_g * d_a,)) if vector else X
