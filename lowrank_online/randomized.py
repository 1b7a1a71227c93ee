"""Randomized SVD and symmetric (Nystrom) randomized eigendecomposition.

Paper 001, Sec. 2.2 (r-kfac's RSVD, Alg. 1 line 13) and its reference [8] (Halko, Martinsson,
Tropp); the symmetric variant is the stabilised Nystrom approximation of Tropp et al.
"""

from __future__ import annotations

from typing import Any

from . import _array, _linalg
from ._results import EighResult, SVDResult
from .operators import as_operand

__all__ = ["reigh", "rsvd"]

# Like fbpca: when the sketch would cover most of the matrix, randomization buys nothing and
# a dense factorization is both faster and exact.
_DENSE_FRACTION = 0.8


def _check_common(rank: Any, oversample: Any, n_iter: Any, limit: int) -> tuple[int, int, int]:
    rank = _array.check_int(rank, "rank", minimum=1, maximum=max(limit, 1))
    if limit == 0:
        raise ValueError("the matrix has a zero dimension; there is nothing to decompose")
    oversample = _array.check_int(oversample, "oversample", minimum=0)
    n_iter = _array.check_int(n_iter, "n_iter", minimum=0)
    return rank, oversample, n_iter


def rsvd(
    X: Any,
    rank: int,
    *,
    oversample: int = 10,
    n_iter: int = 4,
    seed: Any = None,
    check_finite: bool = True,
    xp: Any = None,
) -> SVDResult:
    r"""Randomized truncated SVD (Halko-Martinsson-Tropp) with a stabilised power iteration.

    Parameters
    ----------
    X : array or operator, shape (m, n)
        The matrix, or a matrix-free operator providing ``matmat`` and ``rmatmat``
        (see :mod:`lowrank_online.operators`).
    rank : int
        Number of singular triplets returned, ``1 <= rank <= min(m, n)``.
    oversample : int, optional
        Extra sketch columns (default 10); the sketch has ``rank + oversample`` columns.
    n_iter : int, optional
        Power iterations (default 4); each costs a product with ``X`` and one with ``X^T``.
    seed : None, int or numpy.random.Generator, optional
        Seed of the Gaussian test matrix. It is drawn on the host with NumPy and moved to the
        device, so one seed gives the same result on every backend.
    check_finite : bool, optional
        Check the input (or the operator's products) for NaN and infinity. Default True.
    xp : namespace, optional
        Namespace of an operator that does not expose ``__array_namespace__``.

    Returns
    -------
    SVDResult
        ``U`` (m x rank), ``S`` (rank,) descending, ``Vh`` (rank x n); the largest-magnitude
        entry of each column of ``U`` is positive.

    Raises
    ------
    ValueError, TypeError
        On bad shapes, dtypes, non-finite values or parameters.

    Notes
    -----
    With ``k = rank + oversample`` and ``Omega`` an n x k Gaussian matrix, the range finder
    computes ``Q = orth((X X^T)^q X Omega)``, re-orthonormalising after every product
    (CholeskyQR, falling back to Householder QR: the array API has no LU), then the SVD of
    the small ``Q^T X``. Cost ``(2q + 2)`` products with a k-column block
    (``(4q + 4) m n k`` flops for a dense X) plus ``O((m + n) k^2)``. Error bounds: Halko et
    al. (2011), Thm 10.7. When ``k >= 0.8 min(m, n)`` the dense SVD is used instead (it is
    cheaper and exact there); an operator is then materialised by products with the identity.

    A Dask ``X`` chunked by rows gives ``U`` chunked the same way. The Gaussian test matrix is
    drawn on the client with the same generator, so a seed gives the NumPy result.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
       SIAM Review 53 (2011), Alg. 4.4.
    .. [2] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Sec. 2.2.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import rsvd
    >>> X = xp.reshape(xp.arange(1.0, 601.0), (30, 20)) % 7.0
    >>> res = rsvd(X, 3, seed=0)
    >>> [round(float(s), 6) for s in res.S]  # numpy.linalg.svd: 73.589293, 29.428757, 26.798973
    [73.589293, 29.428757, 26.798973]
    """
    op = as_operand(X, "X", xp=xp, check_finite=check_finite)
    xq = op.xp
    m, n = op.shape
    rank, oversample, n_iter = _check_common(rank, oversample, n_iter, min(m, n))
    rng = _array.as_generator(seed)
    k = min(rank + oversample, m, n)
    be = _backend(op, check_finite)
    if k >= _DENSE_FRACTION * min(m, n):
        U, s, Vh = _dense_svd(op.dense(), be)
        return _flip_svd(U[:, :rank] * 1.0, s[:rank], Vh[:rank, :], be)
    omega = _array.standard_normal(rng, (n, k), op.dtype, xq, op.device)
    Q = _linalg.orthonormalize(op.matmat(omega), be, passes=1 if n_iter else 2)
    for i in range(n_iter):
        Z = _linalg.orthonormalize(op.rmatmat(Q), be, passes=1)
        Q = _linalg.orthonormalize(op.matmat(Z), be, passes=2 if i == n_iter - 1 else 1)
    # B = Q^T X is k x n; its transpose is tall, so factor that: B^T = Ub s Vbh.
    Ub, s, Vbh = _linalg.tall_svd(op.rmatmat(Q), be)
    U = be.matmul(Q, be.from_core(Vbh.T[:, :rank]))
    return _flip_svd(U, be.from_core(s[:rank]), Ub.T[:rank, :], be)


def _backend(op: Any, check_finite: bool) -> _array.Backend:
    """The backend of an operand; an array operand's deferred finiteness is watched."""
    be = _array.Backend(op.xp, op.device, op.dtype, like=op.array)
    if op.is_array and check_finite:
        be.watch(("X", op.array))
    return be


def _dense_svd(X: Any, be: _array.Backend) -> tuple[Any, Any, Any]:
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


def _flip_svd(U: Any, s: Any, Vh: Any, be: _array.Backend) -> SVDResult:
    """Sign convention on U (a fresh array), mirrored on Vh."""
    U, signs = _linalg.flip_signs(U, be.xp, be)
    return SVDResult(*be.detach(U, s, Vh * signs[:, None]))


def reigh(
    X: Any,
    rank: int,
    *,
    oversample: int = 10,
    n_iter: int = 4,
    seed: Any = None,
    check_finite: bool = True,
    xp: Any = None,
) -> EighResult:
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
        Extra sketch columns (default 10).
    n_iter : int, optional
        Power iterations (default 4); each costs **one** product with X (see Notes for how
        this compares with :func:`rsvd`'s ``n_iter``).
    seed : None, int or numpy.random.Generator, optional
        Seed of the Gaussian test matrix, drawn on the host (same result on every backend).
    check_finite : bool, optional
        Check the input (or the operator's products) for NaN and infinity. Default True.
    xp : namespace, optional
        Namespace of an operator that does not expose ``__array_namespace__``.

    Returns
    -------
    EighResult
        ``eigenvalues`` (rank,) descending and non-negative, ``eigenvectors`` (d x rank)
        orthonormal with the largest-magnitude entry of each column positive.

    Notes
    -----
    Symmetry is used twice. The power iteration multiplies by X alone, so ``q`` iterations
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
    .. [3] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Sec. 2.2 (srevd).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import reigh
    >>> A = xp.reshape(xp.arange(1.0, 121.0), (40, 3)) % 5.0
    >>> res = reigh(A @ A.T, 2, oversample=5, seed=0)
    >>> [round(float(v), 6) for v in res.eigenvalues]  # numpy.linalg.eigvalsh: 534.093998, 120.0
    [534.093998, 120.0]
    """
    op = as_operand(X, "X", xp=xp, check_finite=check_finite)
    xq = op.xp
    d, d2 = op.shape
    if d != d2:
        raise ValueError(f"`X` must be square (symmetric PSD), got shape {op.shape}")
    rank, oversample, n_iter = _check_common(rank, oversample, n_iter, d)
    rng = _array.as_generator(seed)
    k = min(rank + oversample, d)
    be = _backend(op, check_finite)
    dense = k >= _DENSE_FRACTION * d
    if op.is_array and (dense or n_iter == 0 or k < 2):
        # No Gaussian sketch of X to test (see Notes): the entrywise test, one read of X.
        _array.check_symmetric(op.array, "X", xq)
    if dense:
        Xl, lxp = be.local(op.dense())
        w, V = _linalg.small_eigh(Xl, lxp)
        V, _ = _linalg.flip_signs(V[:, :rank] * 1.0, lxp)
        return EighResult(be.distribute(lxp.clip(w[:rank], min=0.0)), be.distribute(V, tall=True))
    return _nystrom(op, rank, k, n_iter, rng, be)


def _nystrom(op: Any, rank: int, k: int, n_iter: int, rng: Any, be: _array.Backend) -> EighResult:
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
        _array.check_symmetric_sketch(sketch, "X", cxp, be.eps)
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


def _complete_basis(U: Any, extra: int, be: _array.Backend, rng: Any) -> Any:
    """``extra`` orthonormal columns orthogonal to the orthonormal ``U`` (zero-eigenvalue slots)."""
    G = be.normal(rng, (U.shape[0], extra))
    for _ in range(2):
        G = be.residual(G, U, U.T @ G)
    return _linalg.orthonormalize(G, be)
