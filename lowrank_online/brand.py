"""Brand's thin-SVD update and its symmetric (eigendecomposition) variant.

Paper 001 (Puiu, "Brand New K-FACs"), Sec. 2.3: Alg. 2 (Brand's algorithm, identity (7)) and
Alg. 3 (symmetric Brand's algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_extra as xpx

from . import _array, _backend, _linalg, _validate
from ._results import EighResult, SVDResult

__all__ = ["eigh_update", "svd_update"]


# --------------------------------------------------------------------------------------------
# validation shared by the public entry points
# --------------------------------------------------------------------------------------------
def _as_block(A: Any, name: str, xp: Any, check_finite: bool) -> Any:
    _validate.check_array(A, name, xp, ndim=(1, 2), finite=check_finite)
    return A[:, None] if A.ndim == 1 else A


def _nonnegative(values: Any, name: str, xp: Any) -> Any:
    """Clip rounding-level negatives of a spectrum; reject genuinely negative values."""
    if values.shape[0] == 0:
        return values
    top, low = _array.to_floats(xp, xp.max(xp.abs(values)), xp.min(values))
    if low < -1e3 * _array.eps(xp, values.dtype) * top:
        raise ValueError(f"`{name}` must be non-negative (a PSD representation), got minimum {low:.3g}")
    return xp.clip(values, min=0.0) if low < 0 else values


def _check_rank(rank: Any) -> int | None:
    return _validate.check_int(rank, "rank", minimum=1, allow_none=True)


def _check_basis(Q: Any, vals: Any, qname: str, vname: str, rows: str) -> None:
    if Q.shape[1] != vals.shape[0]:
        raise ValueError(
            f"`{qname}` has {Q.shape[1]} columns but `{vname}` has {vals.shape[0]} entries; "
            f"they must describe the same rank"
        )
    if Q.shape[1] > Q.shape[0]:
        raise ValueError(f"`{qname}` must be tall ({rows} x r with r <= {rows}), got shape {tuple(Q.shape)}")


# --------------------------------------------------------------------------------------------
# symmetric update (Alg. 3)
# --------------------------------------------------------------------------------------------
def eigh_update(
    eigenvalues: Any,
    eigenvectors: Any,
    A: Any,
    *,
    decay: float = 1.0,
    weight: float = 1.0,
    rank: int | None = None,
    check_finite: bool = True,
) -> EighResult:
    r"""Eigendecomposition of ``decay * Q diag(L) Q^T + weight * A A^T`` by Brand's update.

    Parameters
    ----------
    eigenvalues : array, shape (r,)
        Non-negative eigenvalues ``L`` of the held PSD representation (any order).
    eigenvectors : array, shape (d, r)
        Orthonormal eigenvectors ``Q`` (not checked; see Notes).
    A : array, shape (d, n) or (d,)
        The low-rank increment.
    decay : float, optional
        Factor ``rho`` in (0, 1] applied to the held spectrum. Default 1.
    weight : float, optional
        Non-negative factor applied to ``A A^T``. Default 1.
    rank : int, optional
        Keep only the ``rank`` largest eigenpairs. ``None`` (default) keeps all
        ``r + k`` of them, ``k <= n`` being the numerical rank of A's part outside ``span(Q)``;
        ``min(d, r + n)`` for a wide increment (``r + n >= 3d/4``, see Notes).
    check_finite : bool, optional
        Check that the inputs hold no NaN or infinity (a pass over each input). Default True.

    Returns
    -------
    EighResult
        ``eigenvalues`` (descending, non-negative) and ``eigenvectors`` (d x m, orthonormal, the
        largest-magnitude entry of each column positive), in the inputs' namespace, device and
        floating dtype.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite input, negative eigenvalues or parameters out of range.
    TypeError
        On non-floating dtypes or arrays from different namespaces.
    DecompositionError
        If the core eigendecomposition fails even after its fallbacks.

    Notes
    -----
    Symmetric Brand's algorithm (paper 001, Alg. 3, identity (7) with B = A, V = U):
    write ``A = Q C + P R`` with ``P`` an orthonormal basis of A's component outside
    ``span(Q)``; then ``decay Q L Q^T + weight A A^T = [Q P] M_S [Q P]^T`` with the
    (r+k) x (r+k) core

    .. math:: M_S = \begin{bmatrix} \rho L & 0 \\ 0 & 0\end{bmatrix}
              + w \begin{bmatrix} C \\ R \end{bmatrix}\begin{bmatrix} C \\ R \end{bmatrix}^T,

    whose eigendecomposition ``U_M D U_M^T`` gives the result ``([Q P] U_M, D)``.

    The orthogonalisation is block classical Gram-Schmidt with re-orthogonalisation,
    the second projection fused with the Gram matrix of the residual in one GEMM, and
    the residual normalised through that Gram matrix (CholeskyQR, repeated only when the
    residual is ill-conditioned; a rank-revealing SVD handles duplicate, zero or in-span
    columns). The new basis is never formed: it is folded into the final rotation, one GEMM
    of ``[Q W]`` with a small matrix.

    Cost: ``4drn + dn(n+1) + 2d(r+n)m`` flops in the tall dtype (``m`` output columns:
    ``Q^T A``, ``Q C``, the symmetric Gram matrix ``W^T W`` and the final rotation; 744,224 d
    at r = 220, n = 256, m = r + n), ``2drn`` more when the batch lies mostly in ``span(Q)``
    and the re-orthogonalisation runs, plus ``O((r+n)^3)`` for the core, computed in float64
    (the flop model of ``benchmarks/_measure.py``); memory ``O(d(r+n))``. No d x d matrix is
    formed unless ``r + n >= 3d/4``, where the output itself is nearly that large.

    Wide increments (``r + n >= 3d/4`` and in particular ``n > d``, e.g. a convolution
    layer's ``batch x positions`` columns): the update needs A only through ``A A^T``, so A
    is compressed to that d x d Gram matrix (``d (d + 1) n`` flops in the tall dtype, with a
    power-of-two scale that keeps it from overflowing or underflowing) and the core is the
    d x d matrix ``decay Q diag(L) Q^T + weight A A^T`` itself, eigendecomposed in float64:
    Brand's update with ``[Q P]`` the whole space, which it is once ``r + k = d``. Cost
    ``d (d + 1) (n + r) + O(d^3)`` flops (two symmetric products and the eigendecomposition),
    memory ``O(d^2)`` beyond A; no n x n array, nothing cubic in n. The result has
    ``min(d, r + n)`` columns (the trailing eigenvalues of a rank-deficient update are then at
    rounding level). At d = 145, n = 4096, r = 64 one
    update takes about 2.8 ms on the 2-core test machine, 1.1-1.2x the dense
    ``eigh(rho M + (1 - rho) A A^T)`` it stands in for (the same GEMM and eigendecomposition);
    it took 33-82 s through the n x n Gram matrix of the complement. Not on Dask, where d is
    the distributed dimension.

    Exact to rounding when ``rank`` is None; with ``rank=k`` the result is the best
    rank-k approximation of the updated matrix (Eckart-Young).

    The eigenvectors must be orthonormal; the update preserves orthonormality to a few
    ulps per call (measure: ``|Q^T Q - I|`` stays below 1e-12 over 10,000 updates in
    float64), but it cannot restore a basis that was not orthonormal to begin with.

    Dask arrays chunked by rows are accepted (``A`` is rechunked to the rows of
    ``eigenvectors``); the result comes back as Dask arrays, computed, chunked like the
    inputs. Only the small cores reach the client; their finiteness stands in for that of
    the inputs. See the "Scaling out with Dask" page of the documentation.

    References
    ----------
    .. [1] M. Brand, "Fast low-rank modifications of the thin singular value
       decomposition", Linear Algebra Appl. 415 (2006).
    .. [2] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Alg. 3.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import eigh_update
    >>> Q = xp.eye(4)[:, :2]
    >>> L = xp.asarray([3.0, 1.0])
    >>> A = xp.asarray([[0.0], [0.0], [2.0], [0.0]])
    >>> res = eigh_update(L, Q, A, decay=0.5)
    >>> res.eigenvalues
    Array([4. , 1.5, 0.5], dtype=array_api_strict.float64)
    >>> res.eigenvectors.shape
    (4, 3)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp = _array.namespace(("eigenvalues", eigenvalues), ("eigenvectors", eigenvectors), ("A", A))
    _array.same_device(("eigenvalues", eigenvalues), ("eigenvectors", eigenvectors), ("A", A))
    _validate.check_array(eigenvalues, "eigenvalues", xp, ndim=1, finite=check_finite)
    _validate.check_array(eigenvectors, "eigenvectors", xp, ndim=2, finite=check_finite)
    A = _as_block(A, "A", xp, False)
    eigenvectors, A = _array.align_tall(("eigenvectors", eigenvectors), ("A", A), xp=xp)
    _check_basis(eigenvectors, eigenvalues, "eigenvectors", "eigenvalues", "d")
    if A.shape[0] != eigenvectors.shape[0]:
        raise ValueError(
            f"`A` has {A.shape[0]} rows but `eigenvectors` has {eigenvectors.shape[0]}; "
            "they must have the same dimension d"
        )
    # In the dense regime the scaling pass of A's Gram matrix (max and min, through which NaN
    # and infinity propagate) finds a non-finite A: a separate pass over the largest array of
    # the call would cost another 5-10% of it when n >> d.
    if check_finite and not _dense_regime(*eigenvectors.shape, A.shape[1], xp):
        _validate.check_finite(A, "A", xp)
    decay = _validate.check_real(decay, "decay", low=0.0, high=1.0, low_open=True)
    weight = _validate.check_real(weight, "weight", low=0.0)
    rank = _check_rank(rank)
    dt = _array.result_dtype(xp, eigenvalues, eigenvectors, A)
    L = _nonnegative(_array.astype(eigenvalues, dt, xp), "eigenvalues", xp)
    return _eigh_update(
        L, _array.astype(eigenvectors, dt, xp), _array.astype(A, dt, xp), decay, weight, rank, xp,
        check_finite=check_finite,
    )


def _eigh_update(
    L: Any, Q: Any, A: Any, decay: float, weight: float, rank: int | None, xp: Any, *, check_finite: bool = True
) -> EighResult:
    """Validated entry point (used by the trackers): retry a float32 overflow in float64.

    ``check_finite`` only matters on a lazy namespace, whose inputs are checked on the small
    cores (a ``ValueError`` naming the argument); in memory the caller checked them. NumPy's
    floating-point warnings are silenced: an overflow is detected on the cores and results
    and raised as :class:`~lowrank_online.DecompositionError`.
    """
    with _array.quiet_floating_point():
        return _eigh_update_retried(L, Q, A, decay, weight, rank, xp, check_finite)


def _eigh_update_retried(
    L: Any, Q: Any, A: Any, decay: float, weight: float, rank: int | None, xp: Any, check_finite: bool
) -> EighResult:
    def impl(L: Any, Q: Any, A: Any) -> EighResult:
        return _eigh_update_impl(L, Q, A, decay, weight, rank, xp, check_finite)

    return _retried_in_float64(impl, [L, Q, A], xp, values=0, tall=1, name="eigenvalues")


def _retried_in_float64(
    impl: Callable[..., Any], arrays: list[Any], xp: Any, *, values: int, tall: int, name: str
) -> Any:
    """``impl(*arrays)``; a float32 overflow (``FloatingPointError``) is computed again on
    float64 copies and cast back, refused when the result's ``values`` entry then overflows
    float32. Any other failure, or one in float64, is a :class:`DecompositionError`."""
    try:
        return impl(*arrays)
    except FloatingPointError as err:
        if arrays[tall].dtype != xp.float32:
            raise _linalg.DecompositionError(f"Brand update failed: {err}") from err
    try:
        res = impl(*[_array.astype(x, xp.float64, xp) for x in arrays])
    except FloatingPointError as err:
        raise _linalg.DecompositionError(f"Brand update failed in float64 too: {err}") from err
    out = [xp.astype(x, xp.float32) for x in res]
    be = _backend.backend_of(out[tall], xp)
    if not be.all_finite(out[values]):
        raise _linalg.DecompositionError(f"updated {name} overflow float32")
    return type(res)(*be.detach(*out))


def _sorted_spectrum(L: Any, Q: Any, rank: int | None, be: _backend.Backend) -> EighResult:
    """Reorder (and truncate) a representation that needs no basis change."""
    xp = be.xp
    L, lxp = be.local(L)
    order = lxp.argsort(L, descending=True, stable=True)
    if rank is not None:
        order = order[:rank]
    Qs, _ = _linalg.flip_signs(xp.take(Q, order, axis=1), xp, be)
    return EighResult(be.distribute(lxp.take(L, order, axis=0)), be.detach(Qs))


# Above this fraction of d for r + n, the dense form of the update is cheaper than Brand's
# (measured on the 2-core CPU, d = 64...1024, r = 16...220: Brand / dense time is 0.6-1.0 at
# r + n = 0.6 d, 1.0-1.8 at 0.75 d, 1.5-4 from d on; see docs/algorithms/brand.rst).
DENSE_FRACTION = 0.75


def _dense_regime(d: int, r: int, n: int, xp: Any) -> bool:
    """Whether the update is one eigendecomposition of the explicit d x d matrix.

    Once ``r + n >= d`` Brand's basis ``[Q P]`` spans the whole space (``k = d - r`` for an
    increment of full rank, ``k <= d`` whatever n is), so its core is d x d: the same
    eigendecomposition as that of ``rho Q L Q^T + w A A^T`` written in the identity basis,
    with the complement and the final rotation on top; a little below, the core is nearly as
    large and the complement and rotation cost more than the d x d products. The dense form
    needs A only through ``A A^T``, its compression to d columns, formed at ``2 d^2 n``
    flops: no n x n array exists and nothing is cubic in n. Lazy (Dask) backends keep Brand's
    form: there d is the distributed dimension, far above r + n.
    """
    return r + n >= DENSE_FRACTION * d and not _array.is_lazy(xp)


def _eigh_update_impl(
    L: Any, Q: Any, A: Any, decay: float, weight: float, rank: int | None, xp: Any, check_finite: bool = True
) -> EighResult:
    be = _backend.backend_of(Q, xp)
    if A.shape[1] == 0 or weight == 0.0:
        return _sorted_spectrum(L * decay, Q, rank, be)
    if _dense_regime(Q.shape[0], Q.shape[1], A.shape[1], xp):
        return _dense_eigh_update(L, Q, A, decay, weight, rank, be, check_finite)
    return _brand_eigh_update(L, Q, A, decay, weight, rank, be, check_finite)


def _dense_eigh_update(
    L: Any, Q: Any, A: Any, decay: float, weight: float, rank: int | None, be: _backend.Backend, check_finite: bool
) -> EighResult:
    """``r + n >= 3d/4``: eigendecomposition of ``rho Q L Q^T + w A A^T`` as a d x d core.

    ``A A^T`` (A is d x n, possibly n >> d) is formed in the tall dtype with a power-of-two
    scale (:func:`~lowrank_online._linalg.scaled_gram`) that is folded into the weight, so a
    float32 increment of any representable magnitude needs no float64 retry; the sum and its
    eigendecomposition are in the core dtype. The ``min(d, r + n)`` leading eigenpairs are
    kept (``rank`` permitting), the columns Brand's update returns for an increment of full
    rank. The caller may leave the finiteness check of A to this function: the scaling pass
    finds NaN and infinity, and ``check_finite`` turns them into the ``ValueError`` naming A.
    """
    xp, cxp = be.xp, be.cxp
    d, r = Q.shape
    try:
        G, e = _linalg.scaled_gram(A, be)
    except FloatingPointError:
        if check_finite:
            _validate.check_finite(A, "A", xp)  # a ValueError that names the argument
        raise
    try:
        w = math.ldexp(weight, 2 * e)
    except OverflowError as err:
        raise FloatingPointError("weight * A A^T overflows") from err
    # In place: G is a fresh product owned here (an immutable array type falls back to a copy
    # under Python's augmented-assignment rules); d x d temporaries cost page faults at this size.
    M = G
    M *= w
    if r:
        # The held part in the core dtype: Q (d x r) is no larger than this d x d core, and a
        # float32 Q L Q^T would cost the small held eigenvalues their digits (absolute error
        # eps32 |L|), which Brand's core keeps exact on its diagonal.
        B = be.to_core(Q) * cxp.sqrt(be.to_core(L) * decay)[None, :]
        M += B @ B.T
    if not _array.all_finite(cxp, M):
        raise FloatingPointError("the updated matrix overflows")
    lam, U = _linalg.small_eigh(M, cxp)
    # M has rank <= r + n: the eigenpairs beyond are rounding noise, and Brand's update would
    # not have returned them.
    m = min(d, r + A.shape[1]) if rank is None else min(rank, d, r + A.shape[1])
    lam = be.from_core(cxp.clip(lam[:m], min=0.0))
    if not be.all_finite(lam):
        raise FloatingPointError("updated eigenvalues overflow")
    V, _ = _linalg.flip_signs(be.from_core(U[:, :m]), xp, be)
    return EighResult(lam, be.detach(V))


def _brand_eigh_update(
    L: Any, Q: Any, A: Any, decay: float, weight: float, rank: int | None, be: _backend.Backend, check_finite: bool
) -> EighResult:
    """Symmetric Brand's update (Alg. 3) through the orthogonal complement of A."""
    xp, cxp = be.xp, be.cxp
    r = Q.shape[1]
    if check_finite:
        be.watch(("eigenvalues", L), ("eigenvectors", Q), ("A", A))
    be.prefetch(L)

    comp = _linalg.complement(Q, A, be)
    k = comp.coef_p.shape[0]
    K = cxp.concat([comp.coef_q, comp.coef_p], axis=0)
    held = cxp.concat([be.to_core(L) * decay, be.zeros((k,))])
    core = weight * (K @ K.T) + xpx.create_diagonal(held, xp=cxp)
    if not _linalg._finite(cxp, core):  # the updated matrix itself is beyond the core dtype
        raise FloatingPointError("the updated matrix overflows")
    lam, U = _linalg.small_eigh(core, cxp)

    m = lam.shape[0] if rank is None else min(rank, lam.shape[0])
    lam, U = cxp.clip(lam[:m], min=0.0), U[:, :m]
    top, bottom = U[:r, :], U[r:, :]
    Z = cxp.concat([top + comp.zp[:r, :] @ bottom, comp.zp[r:, :] @ bottom], axis=0)
    lam = be.from_core(lam)
    if not be.all_finite(lam):
        raise FloatingPointError("updated eigenvalues overflow")
    V, _ = _linalg.flip_signs(be.matmul(comp.tall, be.from_core(Z)), xp, be)
    return EighResult(lam, be.detach(V))


# --------------------------------------------------------------------------------------------
# general update (Alg. 2)
# --------------------------------------------------------------------------------------------
def svd_update(
    U: Any,
    S: Any,
    Vh: Any,
    A: Any,
    B: Any,
    *,
    rank: int | None = None,
    check_finite: bool = True,
) -> SVDResult:
    r"""Thin SVD of ``U @ diag(S) @ Vh + A @ B.T`` by Brand's update.

    Parameters
    ----------
    U : array, shape (m, r)
        Orthonormal left singular vectors.
    S : array, shape (r,)
        Non-negative singular values (any order).
    Vh : array, shape (r, d)
        Orthonormal right singular vectors, as rows (the array API's ``svd`` convention).
    A : array, shape (m, n) or (m,)
    B : array, shape (d, n) or (d,)
        The low-rank increment ``A @ B.T``.
    rank : int, optional
        Keep only the ``rank`` largest triplets. ``None`` (default) keeps all of them.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    SVDResult
        ``U`` (m x p), ``S`` (p,) descending, ``Vh`` (p x d), in the inputs' namespace,
        device and floating dtype; the largest-magnitude entry of each column of ``U`` is
        positive.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite input, negative singular values or bad ``rank``.
    TypeError
        On non-floating dtypes or arrays from different namespaces.
    DecompositionError
        If the core SVD fails even after its fallback.

    Notes
    -----
    Brand's algorithm (paper 001, Alg. 2, identity (7)): with ``A = U C_A + P_A R_A`` and
    ``B = V C_B + P_B R_B`` (orthogonal complements, computed as in :func:`eigh_update`),

    .. math:: U S V^T + A B^T = [U\ P_A]
              \left(\begin{bmatrix} S & 0\\ 0 & 0\end{bmatrix}
              + \begin{bmatrix} C_A \\ R_A\end{bmatrix}
                \begin{bmatrix} C_B \\ R_B\end{bmatrix}^T\right) [V\ P_B]^T,

    and the SVD of the small core gives the result. Cost ``O((m + d)(r + n)^2)`` flops in
    the tall dtype plus ``O((r+n)^3)`` for the core in float64. Exact to rounding when
    ``rank`` is None.

    On Dask, ``U`` and ``A`` are chunked by rows, ``Vh`` by columns and ``B`` by rows (each
    increment is rechunked to its basis); ``Vh`` comes back chunked like ``Vh``.

    References
    ----------
    .. [1] M. Brand, "Fast low-rank modifications of the thin singular value
       decomposition", Linear Algebra Appl. 415 (2006).
    .. [2] C. O. Puiu, "Brand New K-FACs", arXiv:2210.08494, Alg. 2.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import svd_update
    >>> U = xp.eye(3)[:, :1]; S = xp.asarray([2.0]); Vh = xp.eye(4)[:1, :]
    >>> a = xp.asarray([0.0, 1.0, 0.0]); b = xp.asarray([0.0, 0.0, 1.0, 0.0])
    >>> svd_update(U, S, Vh, a, b).S
    Array([2., 1.], dtype=array_api_strict.float64)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    names = (("U", U), ("S", S), ("Vh", Vh), ("A", A), ("B", B))
    xp = _array.namespace(*names)
    _array.same_device(*names)
    _validate.check_array(U, "U", xp, ndim=2, finite=check_finite)
    _validate.check_array(S, "S", xp, ndim=1, finite=check_finite)
    _validate.check_array(Vh, "Vh", xp, ndim=2, finite=check_finite)
    if A.ndim != B.ndim:
        raise ValueError(f"`A` and `B` must both be 1-D or both be 2-D, got {A.ndim}-D and {B.ndim}-D")
    A = _as_block(A, "A", xp, check_finite)
    B = _as_block(B, "B", xp, check_finite)
    U, A = _array.align_tall(("U", U), ("A", A), xp=xp)
    Vh, B = _array.align_tall(("Vh", Vh, 1), ("B", B), xp=xp)
    _check_basis(U, S, "U", "S", "m")
    _check_basis(Vh.T, S, "Vh", "S", "d")
    if A.shape[0] != U.shape[0]:
        raise ValueError(f"`A` has {A.shape[0]} rows but `U` has {U.shape[0]}; they must match")
    if B.shape[0] != Vh.shape[1]:
        raise ValueError(f"`B` has {B.shape[0]} rows but `Vh` has {Vh.shape[1]} columns; they must match")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"`A` has {A.shape[1]} columns but `B` has {B.shape[1]}; they must match")
    rank = _check_rank(rank)
    dt = _array.result_dtype(xp, U, S, Vh, A, B)
    S = _nonnegative(_array.astype(S, dt, xp), "S", xp)
    args = [_array.astype(x, dt, xp) for x in (U, S, Vh, A, B)]
    # An overflow is detected on the cores and results (DecompositionError): NumPy's warnings
    # about it would report a handled case.
    with _array.quiet_floating_point():
        return _svd_update_retried(args, rank, xp, check_finite)


def _svd_update_retried(args: list[Any], rank: int | None, xp: Any, check_finite: bool) -> SVDResult:
    def impl(*arrays: Any) -> SVDResult:
        return _svd_update_impl(*arrays, rank, xp, check_finite)

    return _retried_in_float64(impl, args, xp, values=1, tall=0, name="singular values")


def _svd_update_impl(
    U: Any, S: Any, Vh: Any, A: Any, B: Any, rank: int | None, xp: Any, check_finite: bool = True
) -> SVDResult:
    be = _backend.backend_of(U, xp)
    cxp = be.cxp
    r = U.shape[1]
    if check_finite:
        be.watch(("U", U), ("S", S), ("Vh", Vh), ("A", A), ("B", B))
    be.prefetch(S)
    ca = _linalg.complement(U, A, be)
    cb = _linalg.complement(Vh.T, B, be)
    ka, kb = ca.coef_p.shape[0], cb.coef_p.shape[0]
    Ka = cxp.concat([ca.coef_q, ca.coef_p], axis=0)
    Kb = cxp.concat([cb.coef_q, cb.coef_p], axis=0)
    held = cxp.concat(
        [
            cxp.concat([xpx.create_diagonal(be.to_core(S), xp=cxp), be.zeros((r, kb))], axis=1),
            be.zeros((ka, r + kb)),
        ],
        axis=0,
    )
    core = held + Ka @ Kb.T
    if not _linalg._finite(cxp, core):  # the updated matrix itself is beyond the core dtype
        raise FloatingPointError("the updated matrix overflows")
    Um, s, Vmh = _linalg.small_svd(core, cxp)

    p = s.shape[0] if rank is None else min(rank, s.shape[0])
    Um, s, Vm = Um[:, :p], s[:p], Vmh[:p, :].T
    Za = cxp.concat([Um[:r, :] + ca.zp[:r, :] @ Um[r:, :], ca.zp[r:, :] @ Um[r:, :]], axis=0)
    Zb = cxp.concat([Vm[:r, :] + cb.zp[:r, :] @ Vm[r:, :], cb.zp[r:, :] @ Vm[r:, :]], axis=0)
    s = be.from_core(s)
    if not be.all_finite(s):
        raise FloatingPointError("updated singular values overflow")
    U_new, signs = _linalg.flip_signs(be.matmul(ca.tall, be.from_core(Za)), xp, be)
    Vh_new = be.matmul(be.from_core(Zb.T), cb.tall.T) * signs[:, None]
    return SVDResult(*be.detach(U_new, s, Vh_new))
