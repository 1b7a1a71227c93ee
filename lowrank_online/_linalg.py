"""Private numerical kernels shared by the core algorithms.

* :func:`small_eigh` / :func:`small_svd` factorize the small (r+n)-sized cores, in float64
  where the device has it, in descending order, with a fallback when the first LAPACK path
  fails (a decomposition that fails must not kill a long run); :func:`thin_svd` does the
  same for a tall matrix, and :func:`orthonormalize` falls back from CholeskyQR to
  Householder QR to the SVD. Each chain ends in :class:`DecompositionError`, which the
  stateful shells turn into "keep the previous state".
* :func:`flip_signs` is the library's sign convention (largest-magnitude entry positive).
* :func:`orthonormalize` is a GEMM-rich CholeskyQR2 with a Householder fallback, used by the
  range finders.
* :func:`complement` writes a block against an orthonormal basis, ``A = Q C + P R``, the step
  that Brand's update (paper 001, Alg. 2 line 4-5, Alg. 3 line 3-4) spends its time in; a
  block whose Gram matrix would over- or underflow is rescaled by a power of two first.
* :func:`scaled_gram` forms ``A A^T`` of a wide block (more columns than rows) with a
  power-of-two scale, so that it neither overflows nor underflows.

Everything here takes an already-resolved namespace ``xp`` and uses only the standard, plus
the hooks of :class:`~lowrank_online._backend.Backend`: ``to_core`` / ``from_core`` around every
small core, ``persist`` on tall intermediates that are read twice, ``matmul`` / ``residual``
for the products of a tall array with a small one. They are casts and identities in memory; on
Dask they keep the tall arrays on the workers, cut the passes over them to the minimum and
batch the round trips to the client (see ``_dask.py``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _array, _backend

__all__ = ["DecompositionError"]

# numpy.linalg.LinAlgError subclasses ValueError; torch's subclasses RuntimeError.
_LINALG_ERRORS = (ValueError, RuntimeError, ArithmeticError)
# What a computation on validated input raises when it fails numerically: DecompositionError
# and FloatingPointError (ArithmeticError), LAPACK's non-convergence (numpy.linalg.LinAlgError,
# which CuPy and array-api-strict raise too; torch's LinAlgError is a RuntimeError). Unlike
# _LINALG_ERRORS it leaves out plain ValueError, so that a refusal of input raised in the middle
# of a computation (reigh's symmetry test from its first sketch) stays a refusal.
NUMERICAL_FAILURES = (ArithmeticError, RuntimeError, np.linalg.LinAlgError)

# Accept the one-pass Gram normalisation when cond(W) <= KAPPA_FAST: the orthogonality it
# loses is ~ eps * cond(W)**2, i.e. at most ~64 eps. Measured on Gaussian blocks with d >> n
# the condition number is ~1.1-1.5, so the fast path is the common case.
KAPPA_FAST = 8.0
# Between KAPPA_FAST and (CHOLQR2_FLOOR * eps)**-1/2 a second, explicit pass (CholeskyQR2)
# restores orthogonality; beyond it the Gram matrix has lost the small singular values and
# the rank-revealing SVD path takes over.
CHOLQR2_FLOOR = 1e3
# Residual directions below NOISE_FACTOR * sqrt(r + 1) * eps * |A|_F are rounding noise of the
# projection A - Q Q^T A (whose error is ~ sqrt(r) eps |A|): they are dropped.
NOISE_FACTOR = 10.0


class DecompositionError(ArithmeticError):
    """A small core factorization failed (non-convergence or non-finite output).

    Raised by the pure functions after their fallbacks are exhausted; stateful trackers catch
    it, keep their previous state and warn.
    """


def _finite(xp: Any, *arrays: Any) -> bool:
    return _array.all_finite(xp, *arrays)


def symmetrize(M: Any) -> Any:
    return (M + M.T) / 2


def small_eigh(M: Any, xp: Any) -> tuple[Any, Any]:
    """Eigendecomposition of a small symmetric PSD matrix, eigenvalues descending.

    Falls back to the SVD (equal to the EVD for a PSD matrix, and a different LAPACK path)
    when ``eigh`` raises or returns non-finite values; raises :class:`DecompositionError`
    if both fail.
    """
    M = symmetrize(M)
    if M.shape[0] == 0:
        return xp.zeros((0,), dtype=M.dtype, device=_array.device(M)), M
    try:
        w, V = xp.linalg.eigh(M)
        if _finite(xp, w, V):
            return xp.flip(w, axis=0), xp.flip(V, axis=1)
    except _LINALG_ERRORS:
        pass
    try:
        U, s, _ = xp.linalg.svd(M, full_matrices=False)
        if _finite(xp, U, s):
            return s, U
    except _LINALG_ERRORS:
        pass
    raise DecompositionError(
        f"symmetric eigendecomposition of a {M.shape[0]}x{M.shape[0]} core failed "
        "(non-convergence or non-finite values)"
    )


def small_svd(M: Any, xp: Any) -> tuple[Any, Any, Any]:
    """Thin SVD of a small matrix, singular values descending, with a fallback.

    The fallback diagonalises the Jordan-Wielandt matrix [[0, M], [M^T, 0]], whose
    eigenvalues are +-s: unlike M^T M it does not square the condition number.
    """
    p, q = M.shape
    k = min(p, q)
    try:
        U, s, Vh = xp.linalg.svd(M, full_matrices=False)
        if _finite(xp, U, s, Vh):
            return U, s, Vh
    except _LINALG_ERRORS:
        pass
    dev = _array.device(M)
    zp = xp.zeros((p, p), dtype=M.dtype, device=dev)
    zq = xp.zeros((q, q), dtype=M.dtype, device=dev)
    J = xp.concat([xp.concat([zp, M], axis=1), xp.concat([M.T, zq], axis=1)], axis=0)
    try:
        w, V = xp.linalg.eigh(J)
        if _finite(xp, w, V):
            V = xp.flip(V, axis=1)[:, :k] * (2.0**0.5)
            w = xp.flip(w, axis=0)[:k]
            return V[:p, :], xp.clip(w, min=0.0), V[p:, :].T
    except _LINALG_ERRORS:
        pass
    raise DecompositionError(f"SVD of a {p}x{q} core failed (non-convergence or non-finite values)")


def flip_signs(V: Any, xp: Any, be: _backend.Backend | None = None) -> tuple[Any, Any]:
    """Make the largest-magnitude entry of every column positive; return (V, signs).

    Two reductions instead of a gather: the largest-magnitude entry is positive exactly when
    ``max(V) >= -min(V)``, ties resolved towards ``+``. Deterministic for equal inputs and
    independent of the algorithm that produced the basis, so results of different paths
    (Brand, randomized, dense) compare entry by entry. With a backend ``be``, the signs come
    from its ``column_signs`` hook (one reduction per row block on a distributed backend).
    """
    if V.shape[1] == 0 or V.shape[0] == 0:
        return V, xp.ones((V.shape[1],), dtype=V.dtype, device=_array.device(V))
    signs = _array.column_signs(V, xp) if be is None else be.column_signs(V)
    # In place: V is a fresh product owned by the caller, and an immutable array type falls
    # back to ``V = V * signs`` under Python's augmented-assignment rules.
    V *= signs
    return V, signs


def orthonormalize(Y: Any, be: _backend.Backend, *, passes: int = 2) -> Any:
    """Orthonormal basis of the range of a tall ``Y`` (d x k, k <= d).

    CholeskyQR with the Gram matrix diagonalised instead of Cholesky-factorised (so its
    conditioning is known exactly), repeated ``passes`` times: each pass costs two GEMMs
    (4dk^2 flops at GEMM speed), where LAPACK's Householder QR runs at a fraction of it.
    When ``Y`` is too ill-conditioned for the Gram matrix (cond > (1e3 eps)^-1/2) it falls
    back to Householder QR, which returns an orthonormal basis in every case, and when QR
    fails (raises, or returns non-finite values) to the left singular vectors of ``Y``;
    :class:`DecompositionError` when that fails too. A ``Y`` without columns is returned as is.
    """
    if Y.shape[1] == 0:
        return Y
    floor = CHOLQR2_FLOOR * be.eps
    # Y is read by every pass (and by the fallback): a lazy Y is materialised once.
    P = Y = be.persist(Y)
    for _ in range(passes):
        try:
            mu, V = small_eigh(be.to_core(P.T @ P), be.cxp)
        except DecompositionError:
            break
        if not float(mu[-1]) > float(mu[0]) * floor:
            break
        P = be.persist(be.matmul(P, be.from_core(V / be.cxp.sqrt(mu)[None, :])))
    else:
        return P
    return _householder_basis(Y, be)


def _householder_basis(Y: Any, be: _backend.Backend) -> Any:
    """Householder QR's basis of a tall ``Y``, else the SVD's (the fallbacks of orthonormalize)."""
    xp = be.xp
    try:
        P = be.persist(xp.linalg.qr(Y).Q)
        if be.all_finite(P):
            return P
    except NUMERICAL_FAILURES:
        pass
    U, _, _ = thin_svd(Y, be)
    return U


def thin_svd(F: Any, be: _backend.Backend) -> tuple[Any, Any, Any]:
    """LAPACK's thin SVD of a tall ``F`` (d x k), with a fallback chain.

    When the SVD raises or returns non-finite values: Householder QR ``F = P R`` and the SVD of
    the small ``R`` (:func:`small_svd`, itself with a fallback), a different LAPACK path with
    the same accuracy. Returns ``(U, s, Vh)`` in the tall namespace; raises
    :class:`DecompositionError` when every path fails.
    """
    xp = be.xp
    try:
        U, s, Vh = xp.linalg.svd(F, full_matrices=False)
        U, s, Vh = be.persist(U, s, Vh)
        if be.all_finite(U, s, Vh):
            return U, s, Vh
    except NUMERICAL_FAILURES:
        pass
    try:
        P, R = xp.linalg.qr(F)
        P = be.persist(P)
        if be.all_finite(P, R):
            Rl, lxp = be.local(R)  # k x k: factorized where small problems are (the client on Dask)
            Ur, s, Vh = small_svd(Rl, lxp)
            return be.persist(be.matmul(P, be.distribute(Ur))), be.distribute(s), be.distribute(Vh)
    except NUMERICAL_FAILURES:
        pass
    raise DecompositionError(f"SVD of a {F.shape[0]}x{F.shape[1]} block failed (non-convergence or non-finite values)")


class Complement(NamedTuple):
    """``A = Q @ coef_q + P @ coef_p`` with ``P = tall @ zp`` orthonormal and orthogonal to Q.

    ``tall`` is ``concat([Q, X])`` for some tall block X, so the new basis ``[Q P]`` times a
    small rotation is one GEMM with ``tall`` (P itself is never formed on the fast path).
    """

    coef_q: Any  # (r, n), core dtype
    coef_p: Any  # (k, n), core dtype
    tall: Any  # (d, r + m), input dtype
    zp: Any  # (r + m, k), core dtype


def complement(Q: Any, A: Any, be: _backend.Backend, *, _rescaled: bool = False) -> Complement:
    """Orthogonal complement of the block ``A`` (d x n) against the orthonormal ``Q`` (d x r).

    Block classical Gram-Schmidt with selective re-orthogonalisation ("twice is enough",
    applied when the DGKS criterion asks for it); the residual is then normalised through
    the eigendecomposition of its Gram matrix. Regimes, chosen by measurement:

    * the residual's Gram matrix has cond <= KAPPA_FAST^2: accepted as is, and the basis is
      kept implicit (``P = tall @ zp``, folded into the caller's final rotation);
    * cond <= 1 / (CHOLQR2_FLOOR eps): one more explicit pass (CholeskyQR2);
    * a residual that still leans into span(Q) (A lies in span(Q) up to a small part) is
      re-projected explicitly, since the Gram matrix would cancel its digits away;
    * otherwise (duplicate or nearly dependent columns, n >= d - r): a rank-revealing SVD of
      the residual.

    Directions of the residual at the rounding level of A (below
    ``NOISE_FACTOR sqrt(r + 1) eps |A|_F``) are dropped: they carry nothing and are not
    reliably orthogonal to Q. Exact to rounding: ``A - Q coef_q - P coef_p`` is of order
    ``eps * |A|``.

    Scale: the Gram matrix ``W^T W`` squares the magnitude of A, so it overflows for
    ``|A| > sqrt(max)`` and drops the digits of the residual (or all of it) for
    ``|A|_F^2 < tiny / eps^2`` (float64: ``|A| < 1e-138``; float32: ``|A| < 1e-12``). Both are
    seen on the first pass (``|A|_F^2 = |C|_F^2 + tr G``, known without another pass) and
    the block is then written as ``A = 2^e A'`` with ``max |A'|`` in [1/2, 1): the complement
    of ``A'`` has the same basis and coefficients ``2^-e`` times A's, exactly (a power of two).
    The common case pays nothing; a rescaled block costs two reductions, a copy and the
    first pass again.
    """
    cxp = be.cxp
    r = Q.shape[1]
    floor = CHOLQR2_FLOOR * be.eps

    # Passes over the tall data: C1 = Q^T A; then W and its Gram matrix; then the caller's
    # final rotation. On a distributed backend the first two are one submitted graph: A and W
    # are materialised once (each is read twice), C1 is computed once on the cluster (read by
    # W and by the client), and C1 and W^T W reach the client in one round trip.
    with _array.quiet_floating_point():  # an over- or underflow is seen below and rescaled
        C1 = Q.T @ A
        W = be.residual(A, Q, C1)
        A, C1, W, G = be.persist(A, C1, W, W.T @ W)
        C, G = be.to_core(C1, G)
    if not _rescaled and not _gram_in_range(C, G, be):
        return _rescaled_complement(Q, A, be)
    R_prev = None  # A = Q C + W R_prev, R_prev the identity until W has been normalised
    noise2 = None
    for attempt in range(4):
        if attempt:
            W, G = be.persist(W, W.T @ W)
            G = be.to_core(G)
        if not _finite(cxp, G):
            raise FloatingPointError("non-finite values in the Gram matrix of the complement")
        if R_prev is None:
            if noise2 is None:
                scale2 = float(cxp.sum(C * C)) + float(cxp.linalg.trace(G))  # |A|_F^2
                noise2 = (NOISE_FACTOR * (r + 1) ** 0.5 * be.eps) ** 2 * scale2
            if float(cxp.linalg.trace(G)) <= noise2:  # A lies in span(Q) up to rounding
                return _empty_complement(Q, C, be)
        # Re-project where the first projection removed more than half of a column's norm
        # (DGKS criterion, eta = 1/sqrt(2)): |W_j| < |A_j|/sqrt(2) <=> |W_j|^2 < |C_j|^2, both
        # known without another pass over the tall data.
        if attempt > 0 or bool(cxp.any(cxp.linalg.diagonal(G) < cxp.sum(C * C, axis=0))):
            C2 = be.to_core(Q.T @ W)
            C = C + (C2 if R_prev is None else C2 @ R_prev)
            if float(cxp.sum(C2 * C2)) > float(cxp.linalg.trace(G)) / 2:
                W = be.residual(W, Q, be.from_core(C2))
                continue
            G = G - C2.T @ C2
        else:
            C2 = be.zeros((r, W.shape[1]))
        mu, V = small_eigh(G, cxp)
        keep = be.count(mu > (noise2 if R_prev is None else 0.0))
        if keep == 0:
            return _empty_complement(Q, C, be)
        mu, V = mu[:keep], V[:, :keep]
        mu_max, mu_min = float(mu[0]), float(mu[-1])
        well = mu_min >= mu_max / KAPPA_FAST**2
        if well or (R_prev is None and mu_min > mu_max * floor):
            s = cxp.sqrt(mu)
            T = V / s[None, :]
            zp = cxp.concat([-(C2 @ T), T], axis=0)
            R = s[:, None] * V.T
            R = R if R_prev is None else R @ R_prev
            tall = be.join_columns([Q, W])
            if well:
                return Complement(C, R, tall, zp)
            # CholeskyQR2: make the normalised residual explicit and orthogonalise it again.
            W = be.matmul(tall, be.from_core(zp))
            R_prev = R
            continue
        break
    return _rank_revealing_complement(Q, A, be)


def _gram_in_range(C: Any, G: Any, be: _backend.Backend) -> bool:
    """Whether the first pass of :func:`complement` kept its digits: finite, and
    ``|A|_F^2 = |C|_F^2 + tr G`` at least ``tiny / eps^2`` of the tall dtype (then what
    underflowed costs at most ``n tiny``, i.e. ``n eps^2`` relative to the Gram matrix)."""
    cxp = be.cxp
    if not _finite(cxp, C, G):
        return False
    scale2 = float(cxp.sum(C * C)) + float(cxp.linalg.trace(G))
    return scale2 >= _array.smallest_normal(be.xp, be.dtype) / be.eps**2 and math.isfinite(scale2)


def _rescaled_complement(Q: Any, A: Any, be: _backend.Backend) -> Complement:
    """:func:`complement` of ``2^-e A`` with ``e`` the exponent of ``max |A|``, coefficients
    scaled back by ``2^e`` in the core dtype (exact: powers of two)."""
    xp = be.xp
    high, low = _array.to_floats(xp, xp.max(A), xp.min(A))  # max and -min: no |A| temporary
    amax = max(high, -low)
    if not math.isfinite(amax):
        raise FloatingPointError("non-finite values in the block to orthogonalise")
    if amax == 0.0:
        return _empty_complement(Q, be.zeros((Q.shape[1], A.shape[1])), be)
    e = math.frexp(amax)[1]  # amax = m 2^e with 0.5 <= m < 1
    # Two normal factors: a single 2^-e is subnormal or overflows for |e| near the dtype's range.
    As = A * math.ldexp(1.0, -(e // 2))
    As *= math.ldexp(1.0, -(e - e // 2))
    comp = complement(Q, As, be, _rescaled=True)
    f = math.ldexp(1.0, e)
    return comp._replace(coef_q=comp.coef_q * f, coef_p=comp.coef_p * f)


def _empty_complement(Q: Any, C: Any, be: _backend.Backend) -> Complement:
    return Complement(C, be.zeros((0, C.shape[1])), Q, be.zeros((Q.shape[1], 0)))


def _rank_revealing_complement(Q: Any, A: Any, be: _backend.Backend) -> Complement:
    """Slow, always-correct path of :func:`complement` (thin SVD of the residual)."""
    cxp = be.cxp
    r = Q.shape[1]

    C1 = be.persist(Q.T @ A)
    W = be.persist(be.residual(A, Q, C1))
    C2 = be.persist(Q.T @ W)
    W = be.persist(be.residual(W, Q, C2))
    C1, C2 = be.to_core(C1, C2)
    C = C1 + C2
    U, s, _ = thin_svd(W, be)
    s_core = be.to_core(s)
    scale = float(cxp.sqrt(cxp.sum(C * C) + cxp.sum(s_core * s_core)))
    threshold = NOISE_FACTOR * (r + 1) ** 0.5 * be.eps * scale
    U = U[:, : be.count(s_core > threshold)]
    # The kept directions may still lean slightly into span(Q): project once more and keep
    # those that survive with most of their norm (Kahan-Parlett criterion).
    U = be.persist(be.residual(U, Q, Q.T @ U))
    mu, V = small_eigh(be.to_core(U.T @ U), cxp)
    k = be.count(mu > 0.5)
    P = be.persist(be.matmul(U, be.from_core(V[:, :k] / cxp.sqrt(mu[:k])[None, :])))
    R = be.to_core(P.T @ W)
    zp = cxp.concat([be.zeros((r, k)), be.eye(k)], axis=0)
    return Complement(C, R, be.join_columns([Q, P]), zp)


def tall_svd(F: Any, be: _backend.Backend) -> tuple[Any, Any, Any]:
    """Thin SVD of a tall ``F`` (d x k, k <= d): orthonormalise, then the SVD of ``P^T F``.

    ``F = P (P^T F)`` holds to rounding for the orthonormal P of :func:`orthonormalize`
    (CholeskyQR2, or Householder when F is too ill-conditioned), so the small SVD gives
    the singular values to an absolute ``eps |F|``, like LAPACK's SVD of F, in ~12 dk^2
    flops at GEMM speed. Returns ``(U, s, Vh)`` with ``U`` tall and ``s``, ``Vh`` as cores.
    """
    F = be.persist(F)
    P = orthonormalize(F, be)
    Ur, s, Vh = small_svd(be.to_core(P.T @ F), be.cxp)
    return be.persist(be.matmul(P, be.from_core(Ur))), s, Vh


def scaled_gram(A: Any, be: _backend.Backend) -> tuple[Any, int]:
    """``A A^T = 2**(2 e) G`` for a d x n block A: the d x d ``G`` (core dtype) and ``e``.

    The product is one GEMM in the tall dtype, ``2 d^2 n`` flops (NumPy runs ``A @ A.T`` as a
    SYRK, half of that); A is never upcast. It is kept (``e = 0``) when it is finite and its
    largest diagonal entry (the largest squared row norm of A) is at least ``tiny / eps^2``:
    then the products that underflowed, even flushed to zero, cost at most ``n tiny``, i.e.
    ``n eps^2`` relative to G. Otherwise it is formed again from ``2**-e A`` with ``e`` the
    exponent of ``max |A|``, exact (a power of two, applied as two normal factors so that
    neither is subnormal nor overflows), after which no scale representable in the dtype
    over- or underflows. So the common case reads A once, and finds a non-finite A for free
    (its Gram matrix is then non-finite): ``FloatingPointError``, which the caller turns into
    the ``ValueError`` naming the argument. The rare case costs two reductions over A, a copy
    and a second product.
    """
    xp, cxp = be.xp, be.cxp
    with _array.quiet_floating_point():  # an overflow here is seen and handled below
        G = be.to_core(A @ A.T)
    floor = _array.smallest_normal(xp, A.dtype) / be.eps**2
    if _finite(cxp, G) and float(cxp.max(cxp.linalg.diagonal(G))) >= floor:
        return G, 0
    # max and -min instead of abs: no temporary as large as A; NaN propagates through both.
    high, low = _array.to_floats(xp, xp.max(A), xp.min(A))
    amax = max(high, -low)
    if not math.isfinite(amax):
        raise FloatingPointError("non-finite values in the increment")
    if amax == 0.0:
        return G, 0
    e = math.frexp(amax)[1]  # amax = m 2^e with 0.5 <= m < 1
    As = A * math.ldexp(1.0, -(e // 2))
    As *= math.ldexp(1.0, -(e - e // 2))
    return be.to_core(As @ As.T), e
