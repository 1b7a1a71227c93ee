"""Randomized SVD and symmetric (Nystrom) randomized eigendecomposition.

Paper 001, Sec. 2.2 (r-kfac's RSVD, Alg. 1 line 13) and its reference [8] (Halko, Martinsson,
Tropp); the symmetric variant is the stabilised Nystrom approximation of Tropp et al.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

from . import _array, _backend, _krylov, _linalg, _validate
from ._results import EighResult, ErrorEstimate, REighResult, RSVDResult, SVDResult
from .operators import as_operand

__all__ = ["reigh", "rsvd"]

# Like fbpca: when the sketch would cover most of the matrix, randomization buys nothing and
# a dense factorization is both faster and exact.
_DENSE_FRACTION = 0.8

METHODS = ("subspace", "block_krylov")
# Chosen by measurement (docs/algorithms/randomized.rst, "Which method"; evidence/krylov.py): to
# a given accuracy block Krylov needs fewer products than subspace iteration on every spectrum.
DEFAULT_METHOD = "block_krylov"
# Subspace iteration's power iterations when no n_iter is given (the historical default).
SUBSPACE_N_ITER = 4
# Block Krylov's depth when no n_iter is given: the matrix-vector products of subspace
# iteration with n_iter = KRYLOV_BUDGET (rsvd: 2 (KRYLOV_BUDGET + 1) k), which is more accurate
# than subspace iteration with n_iter = 4 on the fast, slow and clustered spectra of
# evidence/krylov.py, with 40% fewer products.
KRYLOV_BUDGET = 2
# With tol and no n_iter: the largest budget (in the same units) before giving up.
TOL_BUDGET = 20
# Gaussian probes of the Frobenius error estimate: relative standard deviation at most
# sqrt(2 / PROBES) (a rank-one error), about sqrt(2 / (PROBES * r_eff)) for an error with
# r_eff comparable singular values.
PROBES = 10


def _check_common(rank: Any, oversample: Any, n_iter: Any, limit: int) -> tuple[int, int, int | None]:
    rank = _validate.check_int(rank, "rank", minimum=1, maximum=max(limit, 1))
    if limit == 0:
        raise ValueError("the matrix has a zero dimension; there is nothing to decompose")
    oversample = _validate.check_int(oversample, "oversample", minimum=0)
    n_iter = _validate.check_int(n_iter, "n_iter", minimum=0, allow_none=True)
    return rank, oversample, n_iter


class _Options(NamedTuple):
    method: str
    n_iter: int | None  # None: block Krylov's default depth
    block_size: int | None
    tol: float | None
    estimate: bool


def _check_options(method: Any, n_iter: int | None, block_size: Any, tol: Any, estimate_error: Any,
                   limit: int) -> _Options:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}")
    block_size = _validate.check_int(block_size, "block_size", minimum=1, maximum=max(limit, 1), allow_none=True)
    if tol is not None:
        tol = _validate.check_real(tol, "tol", low=0.0, high=1.0, low_open=True, high_open=True)
        if method != "block_krylov":
            raise ValueError(
                "`tol` needs method='block_krylov' (subspace iteration keeps no iterates to test; "
                "use estimate_error=True for an a-posteriori estimate)"
            )
    if not isinstance(estimate_error, bool):
        raise TypeError(f"`estimate_error` must be a bool, got {type(estimate_error).__name__}")
    if block_size is not None and method != "block_krylov":
        raise ValueError("`block_size` applies to method='block_krylov' only")
    if n_iter is None and method == "subspace":
        n_iter = SUBSPACE_N_ITER
    return _Options(method, n_iter, block_size, tol, estimate_error or tol is not None)


def default_block_size(k: int) -> int:
    """Block size of the block Krylov method for a sketch of ``k = rank + oversample`` columns.

    Fewer columns per block means fewer products to a given accuracy (Chen et al. 2025; measured
    in evidence/krylov.py), but a product with a narrow block runs far below the GEMM rate: on
    a CPU one with fewer than ~16-32 columns costs what reading the matrix costs, on a GPU the
    crossover is wider. Blocks of ``k / 2`` rounded up, at least 16 and at most ``k``, keep every
    product GEMM-bound and still save products.
    """
    return min(k, max(_BLOCK_MIN, -(-k // _BLOCK_DIVISOR)))


_BLOCK_MIN = 16
_BLOCK_DIVISOR = 3


def _krylov_steps(n_iter: int | None, k: int, b: int, limit: int, rank: int, adaptive: bool) -> int | None:
    """Block steps of the block Krylov method: ``n_iter + 1``, or by default the products of
    subspace iteration with ``KRYLOV_BUDGET`` (``TOL_BUDGET`` with ``tol``); never fewer than
    the ``ceil(rank / b)`` that span ``rank`` directions.

    The Krylov bases hold one block more than the steps, and one more for the estimate; they
    must fit in ``limit = min(m, n)`` columns. When they would not, the matrix is small against
    the Krylov space and the dense factorization is both cheaper and exact: None. With ``tol``
    (``adaptive``) the steps are a maximum, cut to what fits, and only a space too small for two
    steps beyond ``rank`` falls back to dense.
    """
    least = -(-rank // b)
    if n_iter is None:
        n_iter = -(-((TOL_BUDGET if adaptive else KRYLOV_BUDGET) + 1) * k // b) - 1
    steps = max(n_iter + 1, least)
    room = limit // b - 2
    if adaptive:
        return min(steps, room) if room >= least + 2 else None
    return steps if steps <= room else None


def rsvd(
    X: Any,
    rank: int,
    *,
    oversample: int = 10,
    n_iter: int | None = None,
    method: str = DEFAULT_METHOD,
    block_size: int | None = None,
    tol: float | None = None,
    estimate_error: bool = False,
    seed: Any = None,
    check_finite: bool = True,
    xp: Any = None,
) -> RSVDResult:
    r"""Randomized truncated SVD: randomized block Krylov (default) or subspace iteration.

    Parameters
    ----------
    X : array or operator, shape (m, n)
        The matrix, or a matrix-free operator providing ``matmat`` and ``rmatmat``
        (see :mod:`lowrank_online.operators`).
    rank : int
        Number of singular triplets returned, ``1 <= rank <= min(m, n)``.
    oversample : int, optional
        Extra sketch columns (default 10); the sketch has ``k = rank + oversample`` columns.
    n_iter : int, optional
        ``method="subspace"``: power iterations (default 4), each a product with ``X`` and one
        with ``X^T`` of k columns. ``method="block_krylov"``: block steps after the first (the
        Krylov space holds ``(X X^T)^j X Omega`` for ``j <= n_iter``), each a product with
        ``X`` and one with ``X^T`` of ``b = block_size`` columns; at least ``ceil(rank / b)``
        steps are taken. Default: the products of subspace iteration with ``n_iter = 2``
        (``ceil(3 k / b)`` steps), more accurate than subspace iteration with 4 on every
        spectrum measured. With ``tol``: the most that is spent (default: the products of
        subspace iteration with 20, within what the dimension allows).
    method : {"block_krylov", "subspace"}, optional
        ``"block_krylov"`` (default): block Golub-Kahan-Lanczos from a Gaussian block, with full
        re-orthogonalisation and Rayleigh-Ritz extraction from the whole Krylov space
        ``[X Omega, (X X^T) X Omega, ...]`` (Musco & Musco 2015). ``"subspace"``: Halko et al.'s
        power iteration, which keeps only the last iterate. See Notes.
    block_size : int, optional
        Columns per Krylov block, ``method="block_krylov"`` only. Default
        ``min(k, max(16, ceil(k / 2)))``.
    tol : float, optional
        Stop as soon as every returned triplet has ``|X v_i - s_i u_i| <= tol * s_i`` (floored
        at ``10 sqrt(max(m, n)) eps s_1``), checked after every block step; needs
        ``method="block_krylov"``. Implies ``estimate_error``. A ``RuntimeWarning`` says when the
        budget ran out first.
    estimate_error : bool, optional
        Attach an :class:`~lowrank_online.ErrorEstimate` to the result (``result.error``): the
        residuals of the returned triplets and an estimate of ``|X - U S Vh|_F``. Cost: block
        Krylov, one more block product with ``X`` and 10 probe columns; subspace, one product
        with ``rank + 10`` columns. Default False.
    seed : None, int or numpy.random.Generator, optional
        Seed of the Gaussian test matrix. It is drawn on the host with NumPy and moved to the
        device, so one seed gives the same result on every backend.
    check_finite : bool, optional
        Check the input (or the operator's products) for NaN and infinity. Default True.
    xp : namespace, optional
        Namespace of an operator that does not expose ``__array_namespace__``.

    Returns
    -------
    RSVDResult
        An :class:`~lowrank_online.SVDResult`: ``U`` (m x rank), ``S`` (rank,) descending,
        ``Vh`` (rank x n); the largest-magnitude entry of each column of ``U`` is positive.
        ``U, S, Vh = rsvd(...)`` unpacks it; ``.error`` holds the estimate (or None).

    Raises
    ------
    ValueError, TypeError
        On bad shapes, dtypes, non-finite values or parameters.

    Warns
    -----
    RuntimeWarning
        When ``tol`` was not met within the budget.

    Notes
    -----
    **Block Krylov** (Musco & Musco 2015, with the block Lanczos recurrence of Golub,
    Luk & Overton 1981). From ``V_1 = orth(Omega)`` (n x b), step j computes
    ``U_j = orth(X V_j)`` and ``V_{j+1} = orth(X^T U_j)``, each block orthogonalised against
    all the previous ones (two passes of block Gram-Schmidt, CholeskyQR2) with its
    coefficients kept. After J steps the coefficients form ``Ct = U^T X V`` (Jb x (J+1)b)
    exactly, so the SVD of this small matrix gives the best rank-``rank`` approximation
    ``U U^T X`` within the block Krylov space of dimension Jb, at no product of its own, and
    its triplets satisfy ``X^T u_i = s_i v_i``. Cost ``2 J b`` matrix-vector products
    (``4 J b m n`` flops for a dense X), ``O((m + n) (J b)^2)`` flops of re-orthogonalisation
    and ``(m + n) (J + 1) b`` memory for the bases. Gap-independent error: within ``(1 + eps)``
    of the optimal spectral error after ``O(log(n) / sqrt(eps))`` steps, against
    ``O(log(n) / eps)`` power iterations for subspace iteration (Musco & Musco 2015, Thm. 1);
    for every block size ``1 <= b <= k`` about ``k / sqrt(eps)`` products suffice, and small
    blocks need the fewest (Chen, Epperly, Meyer, Musco, Rao 2025). The residual
    ``|X v_i - s_i u_i|`` follows from the coefficients of the next product with X, so ``tol``
    is tested one block late and the estimate costs one block product.

    **Subspace iteration**. With ``Omega`` an n x k Gaussian matrix, the range finder
    computes ``Q = orth((X X^T)^q X Omega)``, re-orthonormalising after every product
    (CholeskyQR, falling back to Householder QR: the array API has no LU), then the SVD of
    the small ``Q^T X``. Cost ``(2q + 2)`` products with a k-column block
    (``(4q + 4) m n k`` flops for a dense X) plus ``O((m + n) k^2)``. Error bounds: Halko et
    al. (2011), Thm 10.7. When ``k >= 0.8 min(m, n)`` the dense SVD is used instead (it is
    cheaper and exact there); an operator is then materialised by products with the identity.

    **Error estimate** (``result.error``): the residual norms of the returned triplets (the
    distance from each ``S[i]`` to the nearest singular value of X is at most
    ``residuals[i]``, and at most ``residuals[i]**2 / gap`` when the gap to the rest of the
    spectrum is known), and ``sqrt(mean_i |(X - U S Vh) g_i|^2)`` over 10 Gaussian ``g_i``,
    an unbiased estimate of ``|X - U S Vh|_F^2`` (Halko et al. 2011, Sec. 4.3).

    A Dask ``X`` chunked by rows gives ``U`` chunked the same way. The Gaussian test matrix is
    drawn on the client with the same generator, so a seed gives the NumPy result.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
       SIAM Review 53 (2011), Alg. 4.4.
    .. [2] C. Musco, C. Musco, "Randomized block Krylov methods for stronger and faster
       approximate singular value decomposition", NeurIPS 2015.
    .. [3] T. Chen, E. N. Epperly, R. Meyer, C. Musco, A. Rao, "Does block size matter in
       randomized block Krylov low-rank approximation?", 2025.
    .. [4] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Sec. 2.2.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import rsvd
    >>> X = xp.reshape(xp.arange(1.0, 601.0), (30, 20)) % 7.0
    >>> res = rsvd(X, 3, seed=0)
    >>> [round(float(s), 6) for s in res.S]  # numpy.linalg.svd: 73.589293, 29.428757, 26.798973
    [73.589293, 29.428757, 26.798973]
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    op = as_operand(X, "X", xp=xp, check_finite=check_finite)
    m, n = op.shape
    rank, oversample, n_iter = _check_common(rank, oversample, n_iter, min(m, n))
    opts = _check_options(method, n_iter, block_size, tol, estimate_error, min(m, n))
    rng = _array.as_generator(seed)
    k = min(rank + oversample, m, n)
    be = _operand_backend(op, check_finite)
    steps = None
    if opts.method == "block_krylov" and k < _DENSE_FRACTION * min(m, n):
        b = opts.block_size or default_block_size(k)
        steps = _krylov_steps(opts.n_iter, k, b, min(m, n), rank, opts.tol is not None)
    if k >= _DENSE_FRACTION * min(m, n) or (opts.method == "block_krylov" and steps is None):
        U, s, Vh = _dense_svd(op.dense(), be)
        res = _flip_svd(U[:, :rank] * 1.0, s[:rank], Vh[:rank, :], be)
        if not opts.estimate:
            return RSVDResult(*res)
        return RSVDResult(*res, error=_dense_estimate(op, s, rank, opts, be))
    if opts.method == "subspace":
        res = _flip_svd(*_subspace_svd(op, rank, k, opts.n_iter, rng, be), be)
        if not opts.estimate:
            return RSVDResult(*res)
        residuals, frob = _probe_estimate(op, res, rng, be)
        products = (2 * opts.n_iter + 2) * k + rank + PROBES
        return RSVDResult(*res, error=ErrorEstimate(residuals, frob, PROBES, products, opts.n_iter, None))
    kr = _krylov.svd(op, rank, b, steps, opts.tol, opts.estimate, rng, be)
    res = _flip_svd(kr.U, be.from_core(kr.values), kr.Vh, be)
    if not opts.estimate:
        return RSVDResult(*res)
    _, frob = _probe_estimate(op, res, rng, be, residuals=False)
    return RSVDResult(*res, error=_krylov_estimate(kr, frob, opts, be, "rsvd"))


def _subspace_svd(op: Any, rank: int, k: int, n_iter: int, rng: Any, be: _backend.Backend) -> tuple[Any, Any, Any]:
    """Halko et al.'s stabilised power iteration (see :func:`rsvd`); U, S, Vh before the sign
    convention."""
    xq = op.xp
    n = op.shape[1]
    omega = _array.standard_normal(rng, (n, k), op.dtype, xq, op.device)
    Q = _linalg.orthonormalize(op.matmat(omega), be, passes=1 if n_iter else 2)
    for i in range(n_iter):
        Z = _linalg.orthonormalize(op.rmatmat(Q), be, passes=1)
        Q = _linalg.orthonormalize(op.matmat(Z), be, passes=2 if i == n_iter - 1 else 1)
    # B = Q^T X is k x n; its transpose is tall, so factor that: B^T = Ub s Vbh.
    Ub, s, Vbh = _linalg.tall_svd(op.rmatmat(Q), be)
    U = be.matmul(Q, be.from_core(Vbh.T[:, :rank]))
    return U, be.from_core(s[:rank]), Ub.T[:rank, :]


def _probe_estimate(op: Any, res: tuple, rng: Any, be: _backend.Backend, *, symmetric: bool = False,
                    residuals: bool = True) -> tuple[Any, float]:
    """Residual norms of the triplets (optional) and the Frobenius estimate from PROBES
    Gaussian vectors, from one product of X with ``[V, G]``.

    ``res`` is ``(U, S, Vh)``, or ``(eigenvalues, eigenvectors)`` when ``symmetric``.
    """
    xp = be.xp
    if symmetric:
        S, U = res
        Vh = U.T
        G = be.normal(rng, (U.shape[0], PROBES))
    else:
        U, S, Vh = res
        G = _array.standard_normal(rng, (op.shape[1], PROBES), op.dtype, xp, op.device)
    rank = S.shape[0]
    block = be.join_columns([Vh.T, G]) if residuals else G
    Y = op.symmetric_matmat(block) if symmetric else op.matmat(block)
    Y = be.persist(Y)
    YG = Y[:, rank:] if residuals else Y
    EG = be.residual(YG, U, S[:, None] * (Vh @ G))
    out = None
    if residuals:
        out = xp.linalg.vector_norm(Y[:, :rank] - U * S[None, :], axis=0)
        out, frob = be.to_core(out, xp.linalg.vector_norm(EG))
        out = be.detach(be.from_core(out))
    else:
        frob = be.to_core(xp.linalg.vector_norm(EG))
    return out, float(frob) / math.sqrt(PROBES)


def _dense_estimate(op: Any, s: Any, rank: int, opts: _Options, be: _backend.Backend) -> ErrorEstimate:
    """The dense path is exact: zero residuals and the discarded singular values' norm."""
    tail = s[rank:]
    (frob,) = _array.to_floats(be.xp, be.xp.sqrt(be.xp.sum(tail * tail))) if tail.shape[0] else (0.0,)
    products = 0 if op.is_array else op.shape[1]
    zeros = be.xp.zeros((rank,), dtype=op.dtype, device=op.device)
    return ErrorEstimate(zeros, frob, 0, products, 0, True if opts.tol is not None else None)


def _krylov_estimate(kr: Any, frob: float, opts: _Options, be: _backend.Backend, name: str) -> ErrorEstimate:
    if opts.tol is not None and not kr.converged:
        tiny = _array.smallest_normal(be.cxp, be.cdtype)
        worst = float(be.cxp.max(kr.residuals / be.cxp.clip(kr.values, min=tiny)))
        warnings.warn(
            f"{name} did not reach tol={opts.tol:.1e} in {kr.steps} block steps of {kr.block} columns "
            f"(worst relative residual {worst:.2e}); raise n_iter",
            RuntimeWarning,
            stacklevel=3,
        )
    residuals = be.detach(be.from_core(kr.residuals))
    return ErrorEstimate(residuals, frob, PROBES, kr.products + PROBES, kr.steps, kr.converged)


def _operand_backend(op: Any, check_finite: bool) -> _backend.Backend:
    """The backend of an operand; an array operand's deferred finiteness is watched."""
    be = _backend.backend(op.xp, op.device, op.dtype, like=op.array)
    if op.is_array and check_finite:
        be.watch(("X", op.array))
    return be


def _dense_svd(X: Any, be: _backend.Backend) -> tuple[Any, Any, Any]:
    """Thin SVD of a matrix with a small side (the dense fallback of :func:`rsvd`).

    A tall X stays where it is (on Dask: tall-skinny QR, then the SVD of the small R); a wide
    one is small as a whole and is factorized locally.
    """
    if X.shape[0] >= X.shape[1]:
        U, s, Vh = be.xp.linalg.svd(X, full_matrices=False)
        return U, be.small(s), Vh
    Xl, lxp = be.local(X)
    U, s, Vh = lxp.linalg.svd(Xl, full_matrices=False)
    return be.distribute(U, tall=True), be.distribute(s), be.distribute(Vh)


def _flip_svd(U: Any, s: Any, Vh: Any, be: _backend.Backend) -> SVDResult:
    """Sign convention on U (a fresh array), mirrored on Vh."""
    U, signs = _linalg.flip_signs(U, be.xp, be)
    return SVDResult(*be.detach(U, s, Vh * signs[:, None]))


def reigh(
    X: Any,
    rank: int,
    *,
    oversample: int = 10,
    n_iter: int | None = None,
    method: str = DEFAULT_METHOD,
    block_size: int | None = None,
    tol: float | None = None,
    estimate_error: bool = False,
    seed: Any = None,
    check_finite: bool = True,
    xp: Any = None,
) -> REighResult:
    r"""Randomized eigendecomposition of a symmetric PSD matrix (stabilised Nystrom).

    Parameters
    ----------
    X : array or operator, shape (d, d)
        Symmetric positive semi-definite matrix, or an operator providing ``matmat`` (see
        :mod:`lowrank_online.operators`). Symmetry is checked (see Notes); positive
        semi-definiteness is not (an indefinite X gives a meaningless result).
    rank : int
        Number of eigenpairs returned, ``1 <= rank <= d``.
    oversample : int, optional
        Extra sketch columns (default 10); ``k = rank + oversample``.
    n_iter : int, optional
        ``method="subspace"``: power iterations (default 4), each **one** product with X of k
        columns (see Notes for how this compares with :func:`rsvd`'s ``n_iter``).
        ``method="block_krylov"``: products after the first (the Krylov space holds
        ``X^j Omega`` for ``j <= n_iter``), each with ``b = block_size`` columns; at least
        ``ceil(rank / b)`` are made. Default: the products of subspace iteration with
        ``n_iter = 2`` (``ceil(3 k / b)``). With ``tol``: the most that is spent (default: the
        products of subspace iteration with 20, within what the dimension allows).
    method : {"block_krylov", "subspace"}, optional
        ``"block_krylov"`` (default): block Lanczos from a Gaussian block with full
        re-orthogonalisation, and the Nystrom approximation of the whole Krylov basis
        ``[Omega, X Omega, X^2 Omega, ...]``. ``"subspace"``: Nystrom on the last power iterate.
        See Notes.
    block_size : int, optional
        Columns per Krylov block (``method="block_krylov"`` only). Default
        ``min(k, max(16, ceil(k / 2)))``.
    tol : float, optional
        Stop as soon as every returned pair has ``|X v_i - lambda_i v_i| <= tol * lambda_i``
        (floored at ``10 sqrt(d) eps lambda_1``), checked after every product; needs
        ``method="block_krylov"``. Implies ``estimate_error``.
    estimate_error : bool, optional
        Attach an :class:`~lowrank_online.ErrorEstimate` (``result.error``): residual norms of
        the returned pairs and an estimate of ``|X - V diag(lambda) V^T|_F``. Cost: one more
        block product and 10 probe columns (block Krylov); one product with ``rank + 10``
        columns (subspace). Default False.
    seed : None, int or numpy.random.Generator, optional
        Seed of the Gaussian test matrix, drawn on the host (same result on every backend).
    check_finite : bool, optional
        Check the input (or the operator's products) for NaN and infinity. Default True.
    xp : namespace, optional
        Namespace of an operator that does not expose ``__array_namespace__``.

    Returns
    -------
    REighResult
        An :class:`~lowrank_online.EighResult`: ``eigenvalues`` (rank,) descending and
        non-negative, ``eigenvectors`` (d x rank) orthonormal with the largest-magnitude entry
        of each column positive; ``.error`` holds the estimate (or None).

    Warns
    -----
    RuntimeWarning
        When ``tol`` was not met within the budget.

    Notes
    -----
    **Block Krylov Nystrom.** Block Lanczos from ``Q_1 = orth(G)`` (d x b): each product
    ``X Q_j`` is orthogonalised against every previous block (two passes of block
    Gram-Schmidt, CholeskyQR2) and its coefficients are kept, so that after J products
    ``X Q = Q' Tt`` with ``Q`` (d x Jb), ``Q' = [Q, Q_{J+1}]`` and ``Tt`` small. The Nystrom
    approximation with the sketch ``Q``, ``Y (Q^T Y)^+ Y^T`` for ``Y = X Q = Q' Tt``, is then
    ``Q' Tt T^+ Tt^T Q'^T`` with ``T = Q^T X Q``: a (J+1)b-sized eigenproblem, stabilised by
    the same shift as below, at no product of its own. Nystrom on a basis is never worse than
    Rayleigh-Ritz on it (``Q Q^T X_hat Q Q^T = Q T Q^T`` is a compression of
    ``X_hat <= X``), so the half power of accuracy below carries over to the Krylov space.
    Cost ``J b`` matrix-vector products, ``O(d (J b)^2)`` flops of re-orthogonalisation,
    ``d (J + 1) b`` memory. The residual ``|X v_i - lambda_i v_i|`` of the returned pairs
    follows from the coefficients of the next product (``tol`` is tested one product late).
    The symmetry test below runs on ``G^T X G = (G^T X Q_1)(Q_1^T G)``.

    **Subspace iteration.** Symmetry is used twice. The power iteration multiplies by X alone, so ``q`` iterations
    cost ``q`` products where the SVD route needs ``2q`` for the same power of X. The final
    approximation is the Nystrom one, ``X_hat = Y (Omega^T Y)^+ Y^T`` with ``Y = X Omega``
    and ``Omega = orth(X^q G)``. On the same sketch it beats a projection (Rayleigh-Ritz) by
    half a power: eigenvalue errors decay like ``(lambda_{k+1} / lambda_j)^{2q+1}``, against
    ``^{2q}`` for Rayleigh-Ritz on ``orth(X^q G)``. :func:`rsvd` with ``n_iter=q`` reaches
    ``(sigma_{k+1} / sigma_j)^{4q+2}`` with ``2q + 2`` products, so per product of X the two are
    on par. Choose ``n_iter`` about twice that of :func:`rsvd` for the same eigenvalue
    accuracy. The pseudo-inverse is stabilised by a shift ``nu = sqrt(d) eps |Y|`` that is
    removed from the eigenvalues at the end (Tropp et al. 2017, Alg. 3), using the
    eigendecomposition of the small ``Omega^T Y``. Cost
    ``(q + 1)`` products with a k-column block (``2 d^2 k`` flops each for a dense X) plus
    ``O(d k^2)``. Falls back to the dense ``eigh`` when ``k >= 0.8 d``.

    The symmetry test costs no pass over X of its own. The first power iteration multiplies
    X by the Gaussian test matrix G; for ``i != j``, ``E[(g_i^T A g_j)^2] = |A|_F^2``, so the
    off-diagonal part of ``G^T X G`` and of its antisymmetric part estimate ``|X|_F`` and
    ``|X - X^T|_F`` from ``k (k - 1)`` samples. X (array or operator) is refused with a
    ``ValueError`` when the estimated ``|X - X^T|_F / |X|_F`` exceeds ``sqrt(eps)``. Without
    such a sketch (``n_iter=0``, whose only product is with an orthonormalised G; ``k = 1``;
    or the dense path) an array gets the entrywise test ``max |X - X^T| <= sqrt(eps) max |X|``
    instead, one blocked read of X, and an operator is not tested.

    A Dask ``X`` chunked by rows gives eigenvectors chunked the same way; the d x k test
    matrix is drawn on the client block by block in NumPy's order, so a seed gives the NumPy
    result for any chunking, and the client never holds more than one block of it.

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Fixed-rank approximation of a
       positive-semidefinite matrix from streaming data", NeurIPS 2017, Alg. 3.
    .. [2] N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53 (2011), Sec. 5.4.
    .. [3] J. A. Tropp, R. J. Webber, "Randomized algorithms for low-rank matrix
       approximation: design, analysis, and applications", arXiv:2306.12418 (2023).
    .. [4] C. Musco, C. Musco, NeurIPS 2015 (block Krylov).
    .. [5] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Sec. 2.2 (srevd).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import reigh
    >>> A = xp.reshape(xp.arange(1.0, 121.0), (40, 3)) % 5.0
    >>> res = reigh(A @ A.T, 2, oversample=5, seed=0)
    >>> [round(float(v), 6) for v in res.eigenvalues]  # numpy.linalg.eigvalsh: 534.093998, 120.0
    [534.093998, 120.0]
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    op = as_operand(X, "X", xp=xp, check_finite=check_finite)
    xq = op.xp
    d, d2 = op.shape
    if d != d2:
        raise ValueError(f"`X` must be square (symmetric PSD), got shape {op.shape}")
    rank, oversample, n_iter = _check_common(rank, oversample, n_iter, d)
    opts = _check_options(method, n_iter, block_size, tol, estimate_error, d)
    n_iter = opts.n_iter
    rng = _array.as_generator(seed)
    k = min(rank + oversample, d)
    be = _operand_backend(op, check_finite)
    dense = k >= _DENSE_FRACTION * d
    krylov = opts.method == "block_krylov" and not dense
    if krylov:
        b = opts.block_size or default_block_size(k)
        steps = _krylov_steps(n_iter, k, b, d, rank, opts.tol is not None)
        dense = steps is None
    if op.is_array and (dense or (b < 2 if krylov else n_iter == 0 or k < 2)):
        # No Gaussian sketch of X to test (see Notes): the entrywise test, one read of X.
        _validate.check_symmetric(op.array, "X", xq)
    if dense:
        Xl, lxp = be.local(op.dense())
        w, V = _linalg.small_eigh(Xl, lxp)
        V, _ = _linalg.flip_signs(V[:, :rank] * 1.0, lxp)
        lam = be.distribute(lxp.clip(w[:rank], min=0.0))
        error = None
        if opts.estimate:
            error = _dense_estimate(op, be.distribute(lxp.clip(w, min=0.0)), rank, opts, be)
        return REighResult(lam, be.distribute(V, tall=True), error)
    if not krylov:
        res = _nystrom(op, rank, k, n_iter, rng, be)
        if not opts.estimate:
            return REighResult(*res)
        residuals, frob = _probe_estimate(op, res, rng, be, symmetric=True)
        products = (n_iter + 1) * k + rank + PROBES
        return REighResult(*res, error=ErrorEstimate(residuals, frob, PROBES, products, n_iter, None))
    kr, sketch = _krylov.nystrom(op, rank, b, steps, opts.tol, opts.estimate, rng, be)
    if sketch is not None:
        _validate.check_symmetric_sketch(sketch, "X", be.cxp, be.eps)
    res = _finish_nystrom(kr.values, kr.U, rank, rng, be)
    if not opts.estimate:
        return REighResult(*res)
    _, frob = _probe_estimate(op, res, rng, be, symmetric=True, residuals=False)
    return REighResult(*res, error=_krylov_estimate(kr, frob, opts, be, "reigh"))


def _finish_nystrom(lam: Any, U: Any, rank: int, rng: Any, be: _backend.Backend) -> EighResult:
    """Eigenvalues (core) and vectors in the caller's dtype, zero slots completed, signs fixed."""
    xp = be.xp
    lam = be.from_core(lam)
    if lam.shape[0] < rank:  # X has fewer than `rank` numerically non-zero directions
        lam = xp.concat([lam, xp.zeros((rank - lam.shape[0],), dtype=be.dtype, device=be.device)])
        U = be.join_columns([U, _complete_basis(U, rank - U.shape[1], be, rng)])
    V, _ = _linalg.flip_signs(U[:, :rank] * 1.0, xp, be)
    return EighResult(lam, be.detach(V))


def _nystrom(op: Any, rank: int, k: int, n_iter: int, rng: Any, be: _backend.Backend) -> EighResult:
    xp = op.xp
    d = op.shape[0]
    cxp = be.cxp
    omega = be.normal(rng, (d, k))
    sketch = None
    for i in range(n_iter):
        Y = op.symmetric_matmat(omega)
        if i == 0 and k >= 2:
            # G^T X G of the Gaussian G: the symmetry test at 2 d k^2 flops (fetched with the
            # final core, one round trip on a distributed backend).
            Y = be.persist(Y)
            sketch = omega.T @ Y
        omega = _linalg.orthonormalize(Y, be, passes=2 if i == n_iter - 1 else 1)
    if n_iter == 0:
        omega = _linalg.orthonormalize(omega, be, passes=2)
    # Y is read three times (its norm, the core omega^T Y and F): materialised once.
    Y = be.persist(op.symmetric_matmat(omega))
    nu = (d**0.5) * be.eps * _array.to_floats(xp, xp.linalg.vector_norm(Y))[0]
    Y = Y + nu * omega
    if sketch is None:
        core = be.to_core(omega.T @ Y)
    else:
        core, sketch = be.to_core(omega.T @ Y, sketch)
        _validate.check_symmetric_sketch(sketch, "X", cxp, be.eps)
    beta, V = _linalg.small_eigh(core, cxp)
    keep = be.count(beta > 0.0)
    F = be.matmul(Y, be.from_core(V[:, :keep] / cxp.sqrt(beta[:keep])[None, :]))
    U, s, _ = _linalg.tall_svd(F, be)
    s = s[: min(rank, s.shape[0])]
    lam = be.from_core(cxp.clip(s * s - nu, min=0.0))
    if lam.shape[0] < rank:  # X has fewer than `rank` numerically non-zero directions
        lam = xp.concat([lam, xp.zeros((rank - lam.shape[0],), dtype=op.dtype, device=op.device)])
        U = be.join_columns([U, _complete_basis(U, rank - U.shape[1], be, rng)])
    V, _ = _linalg.flip_signs(U[:, :rank] * 1.0, xp, be)
    return EighResult(lam, be.detach(V))


def _complete_basis(U: Any, extra: int, be: _backend.Backend, rng: Any) -> Any:
    """``extra`` orthonormal columns orthogonal to the orthonormal ``U`` (zero-eigenvalue slots)."""
    G = be.normal(rng, (U.shape[0], extra))
    for _ in range(2):
        G = be.residual(G, U, U.T @ G)
    return _linalg.orthonormalize(G, be)
