"""Leading singular triplets from products only: power SVD and restarted Lanczos bidiagonalization.

Paper 002 (Koroko et al.): App. B.1 (power SVD, with the warm start of Sec. 4) and Sec. 3.2.2
with App. B.2 (Golub-Kahan-Lanczos bidiagonalization, restarted). Both work on arrays and on
matrix-free operators (:mod:`lowrank_online.operators`), e.g. a
:class:`~lowrank_online.FisherBlockOperator`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import array_api_extra as xpx

from .. import _array, _backend, _linalg, _validate
from ..operators import as_operand

__all__ = ["IterativeSVDResult", "lanczos_svd", "power_svd"]

# Default block size of lanczos_svd on an array (operators: 1). Measured against PROPACK on
# dense n x n matrices, top 10, tol 1e-6, one thread: time ratios 1.30 / 1.03 / 1.07 (blocks of
# 1 / 4 / 8) at n = 1000, 1.11 / 0.97 / 0.90 at 2000, 0.92 / 0.77 / 0.75 at 4000, 1.03 / 0.74 /
# 0.66 at 8000 (see the docstring).
ARRAY_BLOCK_SIZE = 8

# The tolerance is floored at FLOOR * sqrt(max(m, n)) * eps: the rounding level of a product,
# below which a residual cannot be driven (float32 would otherwise iterate to max_iter).
_FLOOR = 10.0


class IterativeSVDResult(NamedTuple):
    """Leading singular triplets of an iterative solver, with its convergence record.

    ``U``, ``S``, ``Vh`` are the fields of :class:`~lowrank_online.SVDResult` (``S``
    descending; the largest-magnitude entry of each column of ``U`` positive, ``Vh`` rows
    following ``U``'s signs).
    """

    U: Any
    S: Any
    Vh: Any
    residuals: Any
    """(k,) residual norms ``|A^T u_i - s_i v_i|`` (power SVD: ``|A v - s u|``)."""
    converged: bool
    """Whether every residual met the tolerance."""
    iterations: int
    """Power steps, or Lanczos bidiagonalization steps; each costs one product with A and
    one with A^T."""
    n_products: int
    """Operator-vector products spent (a k-column product counts k)."""


def _floor(be: _backend.Precision, shape: tuple[int, int]) -> float:
    return _FLOOR * math.sqrt(max(shape)) * be.eps


def _norm(x: Any, xp: Any) -> float:
    """Euclidean norm, correct at any representable scale.

    ``vector_norm`` squares the entries: it overflows above ``sqrt(max)`` (float32: 1e19) and
    loses digits below ``sqrt(n tiny / eps)`` (float32: ~1e-15). There the vector is divided
    by its largest magnitude first: two more reductions, on the rare path only.
    """
    with _array.quiet_floating_point():  # an overflow is seen on the result
        nrm = float(xp.linalg.vector_norm(x))
    info = xp.finfo(x.dtype)
    if math.isfinite(nrm) and nrm * nrm >= x.shape[0] * float(info.smallest_normal) / float(info.eps):
        return nrm
    top = max(float(xp.max(x)), -float(xp.min(x))) if x.shape[0] else 0.0
    if not (top > 0.0 and math.isfinite(top)):
        return nrm if top == 0.0 else math.inf
    return top * float(xp.linalg.vector_norm(x / top))


def _start_vector(v0: Any, n: int, op: Any, rng: Any) -> Any:
    """Normalised start vector of length n in the operator's namespace and dtype."""
    xp = op.xp
    if v0 is None:
        v = _array.standard_normal(rng, (n,), op.dtype, xp, op.device)
    else:
        if _array.namespace(("v0", v0)) is not xp:
            raise TypeError(f"`v0` is a {_array._namespace_name(_array.namespace(('v0', v0)))} array but `A` lives in "
                            f"{_array._namespace_name(xp)}; pass arrays of one namespace")
        _validate.check_array(v0, "v0", xp, ndim=(1, 2), finite=True)
        if v0.ndim == 2 and v0.shape[1] != 1 or v0.shape[0] != n:
            raise ValueError(f"`v0` must have {n} entries (the number of columns of A), got shape {tuple(v0.shape)}")
        v = _array.astype(xp.reshape(v0, (n,)), op.dtype, xp)
    nv = _norm(v, xp)
    if not nv > 0.0:
        raise ValueError("`v0` must be a non-zero vector")
    return v / nv


def _start_block(v: Any, b: int, op: Any, rng: Any) -> Any:
    """``b`` orthonormal rows: the start vector, then Gaussian rows drawn after it (so that
    ``b = 1`` draws exactly what the single-vector method draws)."""
    xq = op.xp
    if b == 1:
        return v[None, :]
    rest = _array.standard_normal(rng, (b - 1, v.shape[0]), op.dtype, xq, op.device)
    Q, _ = xq.linalg.qr(xq.concat([v[None, :], rest], axis=0).T)
    return Q.T * 1.0


def _vector_products(op: Any) -> tuple[Any, Any]:
    """``v -> A v`` and ``u -> A^T u`` on 1-D vectors.

    For an array operand these are 1-D GEMVs: NumPy's matmul with an ``(n, 1)`` block takes
    ~20% longer than with a vector at 4000 x 4000 (measured), and the Krylov methods spend
    almost all their time here.
    """
    if op.is_array:
        A = op.array
        return (lambda v: A @ v), (lambda u: A.T @ u)
    return (lambda v: op.matmat(v[:, None])[:, 0]), (lambda u: op.rmatmat(u[:, None])[:, 0])


def _flip(U: Any, S: Any, Vh: Any, xp: Any) -> tuple[Any, Any, Any]:
    U, signs = _linalg.flip_signs(U, xp)
    return U, S, Vh * signs[:, None]


# --------------------------------------------------------------------------------------------
# power SVD (App. B.1)
# --------------------------------------------------------------------------------------------
def power_svd(
    A: Any,
    *,
    v0: Any = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    seed: Any = 0,
    check_finite: bool = True,
    xp: Any = None,
) -> IterativeSVDResult:
    r"""Dominant singular triplet by the power SVD algorithm (paper 002, App. B.1).

    Parameters
    ----------
    A : array or operator, shape (m, n)
        The matrix, or an operator with ``matmat`` and ``rmatmat``.
    v0 : array, shape (n,), optional
        Start vector (warm start: the previous right singular vector, paper 002 Sec. 4).
        Default: a Gaussian vector drawn from ``seed``.
    tol : float, optional
        Stop when ``|A v - s u| <= tol * s`` (relative residual; floored at
        ``10 sqrt(max(m, n)) eps``, the rounding level of a product). Default 1e-6, the
        paper's precision.
    max_iter : int, optional
        Maximum number of power steps. Default 1000.
    seed : None, int or numpy.random.Generator, optional
        Seed of the start vector when ``v0`` is not given. Default 0, so that results are
        deterministic; ``None`` draws fresh entropy.
    check_finite : bool, optional
        Check the input (or the operator's products) for NaN and infinity. Default True.
    xp : namespace, optional
        Namespace of an operator that does not expose ``__array_namespace__``.

    Returns
    -------
    IterativeSVDResult
        ``U`` (m x 1), ``S`` (1,), ``Vh`` (1 x n) with ``A^T u = s v`` exactly and residual
        ``|A v - s u|`` in ``residuals``; ``converged``, ``iterations``, ``n_products``.

    Raises
    ------
    ValueError, TypeError
        On bad shapes, dtypes, parameters or non-finite values.

    Warns
    -----
    RuntimeWarning
        When ``max_iter`` steps did not reach the tolerance.

    Notes
    -----
    Each step is ``u = A v / |A v|``, ``z = A^T u``, ``s = |z|``, ``v = z / s``; the
    paper's stopping test ``|A v - s u|`` reuses the product ``A v`` of the next step, so a
    step costs exactly one product with ``A`` and one with ``A^T``. The residual (and the
    angle of ``v`` to the top right singular vector) shrinks like ``(s_2 / s_1)^2`` per step;
    the singular value error is of the order of ``residual^2 / s_1``. Memory: three vectors
    besides the operator. For the rearranged Fisher block, a step costs
    ``O(N (d_a^2 + d_g^2))``; started from a positive semi-definite ``mat(v0)`` (e.g. the
    K-FAC factor) every iterate stays positive semi-definite (Prop. 3.1 maps the PSD cone
    into itself), which is why :func:`kpsvd` starts there.

    References
    ----------
    .. [1] A. Koroko et al., ESAIM Proc. (2023), App. B.1 and Sec. 4.
    .. [2] G. H. Golub, C. F. Van Loan, Matrix Computations, 4th ed., Sec. 8.2.1.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import power_svd
    >>> A = xp.asarray([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> res = power_svd(A, tol=1e-10)
    >>> round(float(res.S[0]), 10), res.converged
    (3.0, True)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    op = as_operand(A, "A", xp=xp, check_finite=check_finite)
    xq = op.xp
    m, n = op.shape
    if min(m, n) == 0:
        raise ValueError(f"`A` has a zero dimension (shape {op.shape}); there is nothing to decompose")
    tol = _validate.check_real(tol, "tol", low=0.0)
    max_iter = _validate.check_int(max_iter, "max_iter", minimum=1)
    rng = _array.as_generator(seed)
    be = _backend.Precision(xq, op.device, op.dtype)
    tol = max(tol, _floor(be, op.shape))
    matvec, rmatvec = _vector_products(op)
    v = _start_vector(v0, n, op, rng)
    w = matvec(v)
    products = 1
    alpha = _norm(w, xq)
    if alpha == 0.0:  # v0 in the null space of A: one fresh start, else A is zero
        v = _start_vector(None, n, op, rng)
        w = matvec(v)
        products += 1
        alpha = _norm(w, xq)
        if alpha == 0.0:
            u = xq.zeros((m, 1), dtype=op.dtype, device=op.device)
            u[0, 0] = 1.0
            zero = xq.zeros((1,), dtype=op.dtype, device=op.device)
            U, S, Vh = _flip(u, zero, v[None, :] * 1.0, xq)
            return IterativeSVDResult(U, S, Vh, zero, True, 0, products)
    converged = False
    it = 0
    s, res = 0.0, math.inf
    for _ in range(max_iter):
        it += 1
        u = w / alpha
        z = rmatvec(u)
        s = _norm(z, xq)  # >= u^T A v = alpha > 0
        v = z / s
        w = matvec(v)
        products += 2
        res = _norm(w - s * u, xq)
        if res <= tol * s:
            converged = True
            break
        alpha = _norm(w, xq)
    if not converged:
        warnings.warn(
            f"power_svd did not converge in {max_iter} steps (relative residual {res / s:.2e} > {tol:.1e})",
            RuntimeWarning,
            stacklevel=2,
        )
    S = xq.asarray([s], dtype=op.dtype, device=op.device)
    U, S, Vh = _flip(u[:, None] * 1.0, S, v[None, :] * 1.0, xq)
    return IterativeSVDResult(U, S, Vh, xq.asarray([res], dtype=op.dtype, device=op.device), converged, it, products)


# --------------------------------------------------------------------------------------------
# thick-restarted Golub-Kahan-Lanczos bidiagonalization (Sec. 3.2.2, App. B.2)
# --------------------------------------------------------------------------------------------
def lanczos_svd(
    A: Any,
    k: int,
    *,
    krylov_dim: int | None = None,
    block_size: int | None = None,
    v0: Any = None,
    tol: float = 1e-6,
    max_restarts: int = 100,
    seed: Any = 0,
    check_finite: bool = True,
    xp: Any = None,
) -> IterativeSVDResult:
    r"""Top-``k`` singular triplets by restarted Lanczos bidiagonalization with reorthogonalisation.

    Parameters
    ----------
    A : array or operator, shape (m, n)
        The matrix, or an operator with ``matmat`` and ``rmatmat``.
    k : int
        Number of triplets, ``1 <= k <= min(m, n)``.
    krylov_dim : int, optional
        Largest dimension of the Krylov bases before a restart, at least
        ``k + 2 block_size - 1``. Default ``max(2k + 10, 20, k + 2 block_size - 1)`` (capped at
        ``min(m, n)``). Memory is ``(krylov_dim + block_size)(m + n)`` entries. When
        ``krylov_dim + block_size`` exceeds ``min(m, n)`` the dense SVD is used instead.
    block_size : int, optional
        Vectors added to each basis per step (block Golub-Kahan-Lanczos), at most
        ``(krylov_dim - k + 1) / 2`` (the default is reduced to fit). A step then costs
        one product of ``A`` and one of ``A^T`` with ``block_size`` columns, which on a dense
        matrix too large for the cache takes little more time than one with a single vector
        (the matrix is read once): fewer steps, more products, less time. Default 8 for an
        array (0.66x PROPACK's time at n = 8000 and 0.75x at 4000, where single vectors take
        1.03x and 0.92x; 0.9-1.07x at n = 1000-2000, see Notes) and 1 for an operator, whose products with
        blocks may cost as much per column as with vectors (a Fisher operator, or a
        ``LinearOperator`` whose BLAS multiplies narrow blocks slowly: OpenBLAS's
        ``A @ X`` with 4 columns takes 2.5x a GEMV).
    v0 : array, shape (n,), optional
        Start vector (warm start: e.g. a combination of previous right singular vectors,
        paper 002 Sec. 3.2.2). Default: a Gaussian vector drawn from ``seed``.
    tol : float, optional
        Stop when every residual ``|A^T u_i - s_i v_i| <= tol * s_i`` (floored at
        ``10 sqrt(max(m, n)) eps * s_1``). Default 1e-6.
    max_restarts : int, optional
        Maximum number of thick restarts. Default 100.
    seed : None, int or numpy.random.Generator, optional
        Seed of the start vector (and of replacement vectors after an exact breakdown).
        Default 0 (deterministic); ``None`` draws fresh entropy.
    check_finite : bool, optional
        Check the input (or the operator's products) for NaN and infinity. Default True.
    xp : namespace, optional
        Namespace of an operator that does not expose ``__array_namespace__``.

    Returns
    -------
    IterativeSVDResult
        ``U`` (m x k), ``S`` (k,) descending, ``Vh`` (k x n), ``residuals`` (k,),
        ``converged``, ``iterations`` (bidiagonalization steps), ``n_products``.

    Raises
    ------
    ValueError, TypeError
        On bad shapes, ``k`` out of range, dtypes, parameters or non-finite values.

    Warns
    -----
    RuntimeWarning
        When ``max_restarts`` restarts did not reach the tolerance.

    Notes
    -----
    Golub-Kahan-Lanczos (paper 002, App. B.2) builds orthonormal bases ``V_j`` (right) and
    ``U_j`` (left) with ``A V_j = U_j B_j``, ``B_j`` upper triangular (bidiagonal between
    restarts). Both bases are re-orthogonalised in full at every step by two passes of block
    classical Gram-Schmidt ("twice is enough"); each pass is one GEMV with the stored basis,
    never a Python loop over vectors. The coefficients of the left pass are recorded in
    ``B_j``, so ``A V_j = U_j B_j`` holds to rounding and ``B_j = U_j^T A V_j`` exactly
    (Rayleigh-Ritz). With ``B_j = X S Y^T``, the Ritz triplets
    ``(U_j x_i, s_i, V_j y_i)`` satisfy ``A v_i = s_i u_i`` and
    ``|A^T u_i - s_i v_i| = beta_j |x_i[j]|``, so convergence is tested every step on the
    small SVD alone (``O(j^3)``, no extra products). The singular values are those of
    ``B_j``: the matrix is never squared, so small singular values keep their digits.

    When ``j`` reaches ``krylov_dim`` the method restarts thickly (Wu & Simon; Baglama &
    Reichel): it keeps ``k + (krylov_dim - k) // 2`` Ritz pairs and the next Lanczos vector,
    with ``B`` becoming a diagonal plus one column. The start vector is seeded, so results
    are reproducible on every backend. An exact breakdown (an invariant subspace) continues
    with a random vector orthogonal to the basis.

    With ``block_size = b > 1`` each step adds ``b`` vectors to each basis: the block is made
    orthonormal by a QR decomposition whose triangular factor is ``B``'s diagonal block (``B``
    is then block upper triangular, banded between restarts), and the residual of a Ritz
    triplet is ``|R_z x_i[last block]|`` with ``R_z`` the next right block's triangular factor;
    everything else is as above, with GEMMs in place of GEMVs. A block method needs more
    products but fewer steps (13 steps of 4 or 11 of 8 columns against 30 vectors on the
    benchmark above; small blocks do well in practice, Chen, Epperly, Meyer, Musco and Rao
    2025), and a dense product with ``b`` columns costs far less than ``b`` with one.

    Cost per step: one product with ``A`` and one with ``A^T`` (``4 m n`` flops for a dense A;
    ``O(N (d_a^2 + d_g^2))`` for a Fisher operator), ``8 j (m + n)`` flops of
    re-orthogonalisation and an ``O(j^3)`` SVD; per restart ``2 j k' (m + n)`` flops of GEMM.
    Memory ``(krylov_dim + 1)(m + n)`` entries.

    References
    ----------
    .. [1] G. H. Golub, W. Kahan, "Calculating the singular values and pseudo-inverse of a
       matrix", SIAM J. Numer. Anal. B 2 (1965).
    .. [2] J. Baglama, L. Reichel, "Augmented implicitly restarted Lanczos bidiagonalization
       methods", SIAM J. Sci. Comput. 27 (2005).
    .. [3] K. Wu, H. Simon, "Thick-restart Lanczos method for large symmetric eigenvalue
       problems", SIAM J. Matrix Anal. Appl. 22 (2000).
    .. [4] A. Koroko et al., ESAIM Proc. (2023), Sec. 3.2.2 and App. B.2.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import lanczos_svd
    >>> A = xp.reshape(xp.arange(1.0, 601.0), (30, 20)) % 7.0
    >>> res = lanczos_svd(A, 3, krylov_dim=12, tol=1e-10)
    >>> [round(float(s), 6) for s in res.S]  # numpy.linalg.svd: 73.589293, 29.428757, 26.798973
    [73.589293, 29.428757, 26.798973]
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    op = as_operand(A, "A", xp=xp, check_finite=check_finite)
    m, n = op.shape
    p = min(m, n)
    if p == 0:
        raise ValueError(f"`A` has a zero dimension (shape {op.shape}); there is nothing to decompose")
    k = _validate.check_int(k, "k", minimum=1, maximum=p)
    if block_size is None:
        b = ARRAY_BLOCK_SIZE if op.is_array else 1
    else:
        b = _validate.check_int(block_size, "block_size", minimum=1)
    b = min(b, p)
    if krylov_dim is None:
        kd = min(p, max(2 * k + 10, 20, k + 2 * b - 1))
    else:
        # Validated for k = min(m, n) too, where any krylov_dim >= k means the dense SVD.
        kd = min(_validate.check_int(krylov_dim, "krylov_dim", minimum=min(k + 1, p)), p)
        if block_size is None:
            b = max(1, min(b, (kd - k + 1) // 2))  # the largest default block that fits
        if kd < min(k + 2 * b - 1, p):
            raise ValueError(f"`krylov_dim` must be at least k + 2 block_size - 1 = {k + 2 * b - 1} (a thick "
                             f"restart keeps k + (krylov_dim - k) // 2 vectors and adds a block), got {krylov_dim}")
    tol = _validate.check_real(tol, "tol", low=0.0)
    max_restarts = _validate.check_int(max_restarts, "max_restarts", minimum=0)
    rng = _array.as_generator(seed)
    v = _start_vector(v0, n, op, rng)
    if block_size is None and kd < p:
        b = min(b, p - kd)  # the right basis holds krylov_dim + b vectors of length n
    if kd + b > p:
        return _dense_svd(op, k)
    return _lanczos(op, k, kd, b, _start_block(v, b, op, rng), tol, max_restarts, rng)


def _dense_svd(op: Any, k: int) -> IterativeSVDResult:
    """``k`` close to min(m, n): the operator materialised by products with the identity."""
    xq = op.xp
    m, n = op.shape
    if n <= m:
        D = op.matmat(xq.eye(n, dtype=op.dtype, device=op.device))
    else:
        D = op.rmatmat(xq.eye(m, dtype=op.dtype, device=op.device)).T
    U, s, Vh = _linalg.small_svd(D, xq)
    U, S, Vh = _flip(U[:, :k] * 1.0, s[:k], Vh[:k, :], xq)
    zero = xq.zeros((k,), dtype=op.dtype, device=op.device)
    return IterativeSVDResult(U, S, Vh, zero, True, 0, min(m, n))


def _orthogonal_random(rng: Any, basis: Any, size: int, op: Any) -> Any:
    """A unit vector orthogonal to the rows of ``basis`` (after an exact breakdown)."""
    xq = op.xp
    r = _array.standard_normal(rng, (size,), op.dtype, xq, op.device)
    for _ in range(2):
        r = r - basis.T @ (basis @ r)
    return r / _norm(r, xq)


def _block_products(op: Any, b: int) -> tuple[Any, Any]:
    """``Vb -> (A Vb^T)^T`` and ``Ub -> (A^T Ub^T)^T`` on blocks of ``b`` rows (the bases are
    stored as rows); one GEMV per product for ``b = 1`` (see :func:`_vector_products`)."""
    if b == 1:
        matvec, rmatvec = _vector_products(op)
        return (lambda V: matvec(V[0, :])[None, :]), (lambda U: rmatvec(U[0, :])[None, :])
    if op.is_array:
        A = op.array
        return (lambda V: V @ A.T), (lambda U: U @ A)
    return (lambda V: op.matmat(V.T).T), (lambda U: op.rmatmat(U.T).T)


def _orthonormal_rows(W: Any, basis: Any, rng: Any, level: float, op: Any) -> tuple[Any, Any]:
    """``W^T = Q^T R`` with orthonormal rows ``Q`` (b x d), ``W`` already orthogonal to the
    rows of ``basis``: the QR decomposition of ``W^T`` (the norm for one row).

    A row whose diagonal entry of ``R`` is at most ``level`` is an exact breakdown: its row of
    ``Q`` (a noise direction, not reliably orthogonal to ``basis``) is replaced by a random
    unit vector orthogonal to ``basis`` and to the other rows, and its entries of ``R`` are
    kept (rounding-level numbers, so ``W^T = Q^T R`` still holds to that level).
    """
    xq = op.xp
    b, d = W.shape
    if b == 1:
        nrm = _norm(W[0, :], xq)
        R = xq.asarray([[nrm]], dtype=op.dtype, device=op.device)
        if nrm <= level:
            return _orthogonal_random(rng, basis, d, op)[None, :], R
        return W / nrm, R
    Q, R = xq.linalg.qr(W.T)
    Q = Q.T * 1.0
    diag = _array.to_floats(xq, *(R[i, i] for i in range(b)))
    for i, r in enumerate(diag):
        if abs(r) <= level:
            others = xq.concat([basis, Q[:i, :], Q[i + 1:, :]], axis=0)
            Q[i, :] = _orthogonal_random(rng, others, d, op)
    return Q, R


def _lanczos(op: Any, k: int, kd: int, b: int, V0: Any, tol: float, max_restarts: int,
             rng: Any) -> IterativeSVDResult:
    xq = op.xp
    m, n = op.shape
    be = _backend.Precision(xq, op.device, op.dtype)
    cxp = be.cxp
    floor = _floor(be, op.shape)
    # A new Lanczos vector at this level (relative to |A|) is rounding noise: an exact breakdown.
    breakdown = math.sqrt(max(m, n)) * be.eps
    keep = k + (kd - k) // 2
    forward, backward = _block_products(op, b)
    # Bases stored as rows, so that the active part of each is one contiguous block and the
    # projections are plain GEMVs (GEMMs with b columns for blocks).
    Vt = xq.zeros((kd + b, n), dtype=op.dtype, device=op.device)
    Ut = xq.zeros((kd, m), dtype=op.dtype, device=op.device)
    B = be.zeros((kd, kd))
    Vt[:b, :] = V0
    j = 0
    restarts = steps = products = 0
    anorm = 0.0
    converged = False
    while True:
        # ---- one step: W = A V_j against U, then Z = A^T U_j against V (b rows each). Both
        # bases are re-orthogonalised in full, twice ("twice is enough"); the left pass's
        # coefficients are B's column block, so A V = U B holds to rounding.
        W = forward(Vt[j:j + b, :])
        if j > 0:
            Uj = Ut[:j, :]
            H = Uj @ W.T
            W = W - H.T @ Uj
            H2 = Uj @ W.T
            W = W - H2.T @ Uj
            B[:j, j:j + b] = be.to_core(H + H2)
        anorm = max(anorm, _norm(xq.reshape(W, (-1,)), xq))
        Ub, R = _orthonormal_rows(W, Ut[:j, :], rng, breakdown * anorm, op)
        Ut[j:j + b, :] = Ub
        B[j:j + b, j:j + b] = be.to_core(R)
        Z = backward(Ub)
        Vj = Vt[: j + b, :]
        for _ in range(2):
            Z = Z - (Z @ Vj.T) @ Vj
        anorm = max(anorm, _norm(xq.reshape(Z, (-1,)), xq))
        Vb, Rz = _orthonormal_rows(Z, Vj, rng, breakdown * anorm, op)
        Rz = be.to_core(Rz)
        # A^T U_j along a broken-down row lies in span(V): that part of the residual is zero
        small = cxp.abs(cxp.linalg.diagonal(Rz)) <= breakdown * anorm
        Rz = cxp.where(small[:, None], cxp.zeros_like(Rz), Rz)
        Vt[j + b: j + 2 * b, :] = Vb
        j += b
        steps += 1
        products += 2 * b
        if j < k:
            continue
        # ---- Ritz triplets and residuals from the small SVD (no products). With
        # A^T U = V B^T + V_next Rz E^T (E: the last block of columns),
        # |A^T u_i - s_i v_i| = |Rz X[last block, i]|.
        X, s, Yh = _linalg.small_svd(B[:j, :j], cxp)
        s_top = float(s[0])
        anorm = max(anorm, s_top)
        res = cxp.linalg.vector_norm(Rz @ X[j - b:j, :k], axis=0)
        limit = cxp.clip(tol * s[:k], min=floor * s_top)
        if bool(cxp.all(res <= limit)):
            converged = True
            break
        if j + b <= kd:
            continue
        if restarts >= max_restarts:
            break
        # ---- thick restart: keep `keep` Ritz pairs and the next Lanczos block
        restarts += 1
        Ut[:keep, :] = be.from_core(X[:, :keep].T) @ Ut[:j, :]
        Vnext = Vt[j:j + b, :] * 1.0
        Vt[:keep, :] = be.from_core(Yh[:keep, :]) @ Vt[:j, :]
        Vt[keep:keep + b, :] = Vnext
        B = be.zeros((kd, kd))
        B[:keep, :keep] = xpx.create_diagonal(s[:keep], xp=cxp)
        j = keep
    if not converged:
        worst = float(cxp.max(res / cxp.clip(s[:k], min=floor * s_top))) if s_top > 0 else math.inf
        warnings.warn(
            f"lanczos_svd did not converge after {restarts} restarts (worst relative residual "
            f"{worst:.2e} > {tol:.1e}); raise max_restarts or krylov_dim",
            RuntimeWarning,
            stacklevel=3,
        )

    U = Ut[:j, :].T @ be.from_core(X[:, :k])
    Vh = be.from_core(Yh[:k, :]) @ Vt[:j, :]
    U, S, Vh = _flip(U, be.from_core(s[:k]), Vh, xq)
    return IterativeSVDResult(U, S, Vh, be.from_core(res), converged, steps, products)
