"""Nearest Kronecker sums of a Fisher block from per-sample statistics, matrix-free.

Paper 002 (Koroko et al.): KPSVD (Sec. 3.1, Thm 3.1, Prop. 3.1-3.2), deflation (Sec. 3.2.1),
Lanczos bidiagonalization (Sec. 3.2.2) and KFAC-corrected (Sec. 3.3); K-FAC (eq. (1)).
"""

from __future__ import annotations

from typing import Any

from .. import _array, _linalg, _validate
from . import _checks
from .fisher import FisherBlockOperator
from .kronsum import KronSum
from .lanczos import IterativeSVDResult, lanczos_svd, power_svd

__all__ = ["kfac_corrected", "kfac_factors", "kpsvd"]

_METHODS = ("power", "deflation", "lanczos")


def kfac_factors(a: Any, g: Any, *, check_finite: bool = True) -> KronSum:
    r"""K-FAC's Kronecker factors ``E[g g^T] ⊗ E[a a^T]`` of a fully-connected layer.

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
    KronSum
        One term: ``left[0] = g^T g / N`` (``d_g x d_g``), ``right[0] = a^T a / N``
        (``d_a x d_a``), symmetric positive semi-definite.

    Raises
    ------
    ValueError, TypeError
        On bad shapes or dtypes, non-finite values, or a factor that overflows the dtype.

    Notes
    -----
    Paper 002, eq. (1) (Martens & Grosse 2015): exact when ``a`` and ``g`` are independent
    (then ``E[g g^T ⊗ a a^T] = E[g g^T] ⊗ E[a a^T]``). Cost ``N (d_a^2 + d_g^2)`` flops.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import kfac_factors
    >>> ks = kfac_factors(xp.asarray([[1.0], [3.0]]), xp.asarray([[2.0], [0.0]]))
    >>> float(ks.left[0][0, 0]), float(ks.right[0][0, 0])
    (2.0, 5.0)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp, a, g = _validate.check_statistics(a, g, check_finite=check_finite)
    left, right = _checks.kfac_pair(a, g, xp)
    return KronSum((left,), (right,))


def _check_method(method: Any, terms: int) -> str:
    if method is None:
        return "power" if terms == 1 else "deflation"
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS} or None, got {method!r}")
    if method == "power" and terms > 1:
        raise ValueError("method='power' computes one term; use 'deflation' or 'lanczos' for terms > 1")
    return method


def _max_terms(op: FisherBlockOperator) -> int:
    """Rank bound of R(F): N samples, and symmetric d x d matrices span d (d + 1) / 2."""
    return min(op.n_samples, op.dim_a * (op.dim_a + 1) // 2, op.dim_g * (op.dim_g + 1) // 2)


def _warm_vector(init: Any, op: FisherBlockOperator, index: int | None) -> Any:
    """Start vector from a previous KronSum: vec of its right factor(s)."""
    xp = op.__array_namespace__()
    if init is None:
        return None
    if not isinstance(init, KronSum):
        raise TypeError(f"`init` must be a KronSum (a previous result), got {type(init).__name__}")
    rights = init.right if index is None else init.right[index : index + 1]
    for i, R in enumerate(rights):
        _array.namespace((f"init.right[{i}]", R), ("a", op.a))
        _checks.square(R, f"init.right[{i}]", xp, check_finite=True, size=op.dim_a)
    v = xp.reshape(_array.astype(rights[0], op.dtype, xp), (-1,))
    for R in rights[1:]:
        v = v + xp.reshape(_array.astype(R, op.dtype, xp), (-1,))
    return _nonzero(v, xp)


def _nonzero(v: Any, xp: Any) -> Any:
    """``v``, or None (the solvers' seeded start) when it is zero: an all-zero warm start or
    K-FAC factor (a batch with ``a = 0``) carries no direction, and the caller never passed it."""
    return v if bool(xp.any(v != 0.0)) else None


def _kfac_start(op: FisherBlockOperator) -> Any:
    """vec of the K-FAC factor ``E[a a^T]`` up to a scale (PSD, see :func:`kpsvd`), or None
    when it is zero. From the operator's normalised copy of ``a``: the start's scale does not
    matter, and ``a^T a`` itself overflows float32 from ``|a| ~ 1e19`` on."""
    xp = op.__array_namespace__()
    a = op._a_unit
    return _nonzero(xp.reshape(a.T @ a, (-1,)), xp)


def _pair(res: IterativeSVDResult, i: int, op: FisherBlockOperator, first: bool) -> tuple[Any, Any]:
    """``(sqrt(s) mat(u), sqrt(s) mat(v))``, symmetrised; the first term made PSD."""
    xp = op.__array_namespace__()
    root = xp.sqrt(res.S[i])
    L = _linalg.symmetrize(xp.reshape(res.U[:, i], (op.dim_g, op.dim_g)) * root)
    R = _linalg.symmetrize(xp.reshape(res.Vh[i, :], (op.dim_a, op.dim_a)) * root)
    # Prop. 3.2: L and R are semi-definite with one sign; (-L) ⊗ (-R) = L ⊗ R picks PSD.
    # The sign convention on U already makes the largest-magnitude entry of vec(L) positive,
    # which for a semi-definite L is a diagonal entry; the trace test guards rounding ties.
    if first and float(xp.linalg.trace(L)) < 0.0:
        L, R = -L, -R
    return L, R


def _check_common(tol: Any, max_iter: Any) -> tuple[float, int]:
    return _validate.check_real(tol, "tol", low=0.0), _validate.check_int(max_iter, "max_iter", minimum=1)


def kpsvd(
    a: Any,
    g: Any,
    *,
    terms: int = 1,
    method: str | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    krylov_dim: int | None = None,
    init: KronSum | None = None,
    seed: Any = 0,
    check_finite: bool = True,
) -> KronSum:
    r"""Nearest Kronecker sum of a Fisher block, from per-sample statistics, matrix-free.

    Parameters
    ----------
    a : array, shape (N, d_a)
        Per-sample layer inputs (bias column included by the caller).
    g : array, shape (N, d_g)
        Per-sample pre-activation gradients.
    terms : int, optional
        Number of Kronecker products, at most ``min(N, d_a (d_a+1)/2, d_g (d_g+1)/2)`` (the
        rank bound of ``R(F)``). Default 1.
    method : {"power", "deflation", "lanczos"}, optional
        ``"power"``: power SVD of ``R(F)`` (KPSVD, one term). ``"deflation"``: power SVDs of
        ``R(F)``, then of ``R(F - L_1 ⊗ R_1)``, ... (Sec. 3.2.1). ``"lanczos"``: all terms at
        once by restarted Lanczos bidiagonalization (Sec. 3.2.2). Default: ``"power"`` for
        one term, ``"deflation"`` otherwise.
    tol : float, optional
        Relative residual tolerance of the singular triplets. Default 1e-6 (the paper's).
    max_iter : int, optional
        Power steps per term (``"power"``, ``"deflation"``) or restarts (``"lanczos"``).
        Default 1000.
    krylov_dim : int, optional
        Krylov dimension of ``"lanczos"``; default ``max(2 terms + 6, 10)``.
    init : KronSum, optional
        Warm start from a previous result (paper 002, Sec. 4): its right factors start the
        iterations. Default: the K-FAC factor ``E[a a^T]`` for the first term (a positive
        semi-definite start, so every power iterate stays PSD), a seeded Gaussian otherwise
        and wherever that start would be zero (then ``F = 0`` and the factors are zero).
    seed : None, int or numpy.random.Generator, optional
        Seed of the random start vectors. Default 0 (deterministic).
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    KronSum
        ``terms`` pairs ``(L_i, R_i)``, ``L_i`` of shape ``d_g x d_g`` and ``R_i`` of shape
        ``d_a x d_a``, all symmetric, in decreasing order of ``|L_i|_F |R_i|_F`` (the
        singular values of ``R(F)``); ``L_1`` and ``R_1`` positive semi-definite
        (Prop. 3.2), the later terms signed so that the largest-magnitude entry of ``L_i`` is
        positive. ``F ≈ sum_i L_i ⊗ R_i`` in the row-major convention
        (``docs/conventions.rst``).

    Raises
    ------
    ValueError, TypeError
        On bad shapes (``a`` and ``g`` with different numbers of rows), non-finite values,
        ``terms`` beyond the rank bound, or bad parameters.

    Warns
    -----
    RuntimeWarning
        When an iteration did not reach the tolerance.

    Notes
    -----
    ``|F - sum_i L_i ⊗ R_i|_F = |R(F) - sum_i vec(L_i) vec(R_i)^T|_F`` (Thm 3.1), so the
    best one-term approximation is the leading singular triplet ``(s, u, v)`` of ``R(F)``,
    ``L = sqrt(s) mat(u)``, ``R = sqrt(s) mat(v)``; the best ``t``-term one uses the ``t``
    leading triplets (Eckart-Young), with error ``sqrt(|F|_F^2 - sum_{i<=t} s_i^2)``, never
    larger than K-FAC's. Products with ``R(F)`` come from :class:`FisherBlockOperator`
    (Prop. 3.1): ``O(N (d_a^2 + d_g^2))`` per product, and neither F nor ``R(F)`` is formed.
    Memory: a few vectors of length ``d_a^2 + d_g^2`` (``"lanczos"``: ``krylov_dim + 1`` of
    them). Deflation is the optimal two-term sum only when its first triplet is exact; with
    ``tol`` it matches Lanczos to ``O(tol)``. The factors are symmetric because ``R(F)``
    maps vectorised symmetric matrices to vectorised symmetric matrices (Prop. 3.2); they
    are symmetrised to remove rounding.

    References
    ----------
    .. [1] A. Koroko et al., "Efficient approximations of the Fisher matrix in neural networks
       using Kronecker product singular value decomposition", ESAIM Proc. (2023),
       Sec. 3.1-3.2.
    .. [2] C. F. Van Loan, "The ubiquitous Kronecker product", J. Comput. Appl. Math. 123
       (2000).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import kpsvd, kfac_factors, FisherBlockOperator
    >>> a = xp.asarray([[1.0, 0.0], [1.0, 2.0], [0.5, 1.0], [1.0, -1.0]])
    >>> g = xp.asarray([[1.0, 0.5], [-1.0, 0.0], [2.0, 1.0], [0.0, 1.0]])
    >>> op = FisherBlockOperator(a, g)
    >>> err_kpsvd = op.minus(kpsvd(a, g, tol=1e-10)).frobenius_norm()
    >>> err_kfac = op.minus(kfac_factors(a, g)).frobenius_norm()
    >>> bool(err_kpsvd <= err_kfac)
    True
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    op = FisherBlockOperator(a, g, check_finite=check_finite)
    terms = _validate.check_int(terms, "terms", minimum=1)
    limit = _max_terms(op)
    if terms > limit:
        raise ValueError(
            f"`terms` = {terms} exceeds the rank bound of R(F), min(N, d_a(d_a+1)/2, d_g(d_g+1)/2) = {limit}"
        )
    method = _check_method(method, terms)
    tol, max_iter = _check_common(tol, max_iter)
    if init is not None and not isinstance(init, KronSum):
        raise TypeError(f"`init` must be a KronSum (a previous result), got {type(init).__name__}")
    rng = _array.as_generator(seed)
    if method == "lanczos":
        kd = max(2 * terms + 6, 10) if krylov_dim is None else krylov_dim
        v0 = _warm_vector(init, op, None)
        if v0 is None:
            v0 = _kfac_start(op)
        res = lanczos_svd(op, terms, krylov_dim=kd, v0=v0, tol=tol, max_restarts=max_iter, seed=rng, check_finite=False)
        pairs = [_pair(res, i, op, i == 0) for i in range(terms)]
    else:
        pairs = []
        current = op
        for i in range(terms):
            v0 = _warm_vector(init, op, i) if init is not None and i < init.n_terms else None
            if v0 is None and i == 0:
                v0 = _kfac_start(op)
            res = power_svd(current, v0=v0, tol=tol, max_iter=max_iter, seed=rng, check_finite=False)
            pair = _pair(res, 0, op, i == 0)
            pairs.append(pair)
            if i + 1 < terms:
                current = op.minus(KronSum(*(tuple(x) for x in zip(*pairs, strict=True))))
    return KronSum(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


def kfac_corrected(
    a: Any,
    g: Any,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    init: KronSum | None = None,
    seed: Any = 0,
    check_finite: bool = True,
) -> KronSum:
    r"""K-FAC plus its best Kronecker correction (paper 002, Sec. 3.3).

    Parameters
    ----------
    a : array, shape (N, d_a)
        Per-sample layer inputs (bias column included by the caller).
    g : array, shape (N, d_g)
        Per-sample pre-activation gradients.
    tol : float, optional
        Relative residual tolerance of the power SVD. Default 1e-6.
    max_iter : int, optional
        Maximum power steps. Default 1000.
    init : KronSum, optional
        A previous ``kfac_corrected`` result: its correction's right factor warm-starts the
        power SVD.
    seed : None, int or numpy.random.Generator, optional
        Seed of the start vector when there is no warm start. Default 0.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    KronSum
        Two terms: K-FAC's ``(E[g g^T], E[a a^T])`` and the correction ``(P, Q)``, symmetric,
        signed so that the largest-magnitude entry of ``P`` is positive (``P ⊗ Q`` is what
        matters; the correction is in general indefinite).

    Raises
    ------
    ValueError, TypeError
        On bad shapes, non-finite values or bad parameters.

    Notes
    -----
    ``(P, Q) = argmin |F - E[g g^T] ⊗ E[a a^T] - P ⊗ Q|_F`` is the leading singular triplet
    of ``R(F) - vec(E[g g^T]) vec(E[a a^T])^T`` (eq. (6)), computed by the power SVD on the
    deflated :class:`FisherBlockOperator` (products ``O(N (d_a^2 + d_g^2))``). The error is
    never larger than K-FAC's (``P = 0`` is feasible). Solve with the result through
    :class:`KronSumInverse` (Sec. 3.4).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import kfac_corrected, kfac_factors, FisherBlockOperator
    >>> a = xp.asarray([[1.0, 0.0], [1.0, 2.0], [0.5, 1.0], [1.0, -1.0]])
    >>> g = xp.asarray([[1.0, 0.5], [-1.0, 0.0], [2.0, 1.0], [0.0, 1.0]])
    >>> op = FisherBlockOperator(a, g)
    >>> ks = kfac_corrected(a, g, tol=1e-10)
    >>> ks.n_terms, bool(op.minus(ks).frobenius_norm() <= op.minus(kfac_factors(a, g)).frobenius_norm())
    (2, True)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    op = FisherBlockOperator(a, g, check_finite=check_finite)
    tol, max_iter = _check_common(tol, max_iter)
    kfac = op.kfac()
    v0 = None
    if init is not None:
        if not isinstance(init, KronSum) or init.n_terms != 2:
            raise TypeError("`init` must be a two-term KronSum returned by kfac_corrected")
        v0 = _warm_vector(init, op, 1)
    res = power_svd(op.minus(kfac), v0=v0, tol=tol, max_iter=max_iter, seed=seed, check_finite=False)
    P, Q = _pair(res, 0, op, False)
    return KronSum((kfac.left[0], P), (kfac.right[0], Q))

