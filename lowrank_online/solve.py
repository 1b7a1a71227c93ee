"""Damped solves with a low-rank eigendecomposition (paper 001, Alg. 1 lines 16-17, Sec. 3.5)."""

from __future__ import annotations

from typing import Any

from . import _array, _backend, _validate
from .brand import _nonnegative  # the same refusal of negative eigenvalues as the Brand updates

__all__ = ["damped_solve"]


def damped_solve(
    eigenvalues: Any,
    eigenvectors: Any,
    X: Any,
    damping: float,
    *,
    continuation: bool = False,
    check_finite: bool = True,
) -> Any:
    r"""Apply ``(Q diag(L) Q^T + damping I)^{-1}`` to ``X`` in time linear in the dimension.

    Parameters
    ----------
    eigenvalues : array, shape (r,)
        Non-negative eigenvalues ``L``.
    eigenvectors : array, shape (d, r)
        Orthonormal eigenvectors ``Q``.
    X : array, shape (d, k) or (d,)
        Right-hand side(s).
    damping : float
        Tikhonov damping ``lambda > 0``.
    continuation : bool, optional
        Spectrum continuation (paper 001, Sec. 3.5): treat the ``d - r`` eigenvalues missing
        from the representation as equal to ``min(L)`` instead of zero, i.e. use
        ``lambda + min L`` as damping and ``L - min L`` as spectrum. Default False.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Returns
    -------
    array, shape of ``X``
        The solution, in the inputs' namespace, device and dtype.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite input, negative eigenvalues or ``damping <= 0``.
    TypeError
        On non-floating dtypes, arrays from different namespaces or a ``continuation``
        that is not a bool.

    Notes
    -----
    Paper 001, Alg. 1 lines 16-17 (and Alg. 8 lines 5 and 7):

    .. math:: (Q L Q^T + \lambda I)^{-1} X
              = Q \left[(L + \lambda I)^{-1} - \tfrac{1}{\lambda} I\right] Q^T X
              + \tfrac{1}{\lambda} X,

    exact for orthonormal Q (the inverse of the damped low-rank matrix, not an
    approximation of it). The bracket is evaluated as ``-(L / (L + lambda)) / lambda``, which
    does not cancel when ``L << lambda`` and does not overflow at any representable scale.
    Cost ``4 d r k + O(d k)`` flops, memory ``O(r k)`` besides the output: no d x d matrix is
    formed.

    With Dask arrays chunked by rows the result is chunked like ``X`` (``X`` is rechunked
    to the rows of ``eigenvectors``); ``Q^T X`` is the only value that reaches the client.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import damped_solve
    >>> Q = xp.eye(3)[:, :1]; L = xp.asarray([3.0])
    >>> damped_solve(L, Q, xp.asarray([4.0, 2.0, 1.0]), 1.0)
    Array([1., 2., 1.], dtype=array_api_strict.float64)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    names = (("eigenvalues", eigenvalues), ("eigenvectors", eigenvectors), ("X", X))
    xp = _array.namespace(*names)
    _array.same_device(*names)
    _validate.check_array(eigenvalues, "eigenvalues", xp, ndim=1, finite=check_finite)
    _validate.check_array(eigenvectors, "eigenvectors", xp, ndim=2, finite=check_finite)
    _validate.check_array(X, "X", xp, ndim=(1, 2), finite=check_finite)
    eigenvectors, X = _array.align_tall(("eigenvectors", eigenvectors), ("X", X), xp=xp)
    if eigenvectors.shape[1] != eigenvalues.shape[0]:
        raise ValueError(
            f"`eigenvectors` has {eigenvectors.shape[1]} columns but `eigenvalues` has "
            f"{eigenvalues.shape[0]} entries"
        )
    if X.shape[0] != eigenvectors.shape[0]:
        raise ValueError(
            f"`X` has {X.shape[0]} rows but `eigenvectors` has {eigenvectors.shape[0]}; "
            "they must have the same dimension d"
        )
    damping = _validate.check_real(damping, "damping", low=0.0, low_open=True)
    continuation = _validate.check_bool(continuation, "continuation")
    dt = _array.result_dtype(xp, eigenvalues, eigenvectors, X)
    L = _nonnegative(_array.astype(eigenvalues, dt, xp), "eigenvalues", xp)
    return _damped_solve(
        L, _array.astype(eigenvectors, dt, xp), _array.astype(X, dt, xp), damping, continuation, xp,
        check_finite=check_finite,
    )


def _coefficients(L: Any, damping: float, continuation: bool, xp: Any) -> tuple[Any, float]:
    """``(coef, 1 / lambda)`` of ``(Q L Q^T + lambda I)^{-1} X = X / lambda + Q diag(coef) Q^T X``,
    after spectrum continuation (``lambda + min L`` and ``L - min L``).

    ``coef = -(L / (L + lambda)) / lambda``: the ratio lies in [0, 1], so there is no
    cancellation when ``L << lambda`` and no overflow of a product at large scales.
    """
    if continuation and L.shape[0]:
        low = xp.min(L)
        damping = damping + _array.to_floats(xp, low)[0]
        L = L - low
    return -(L / (L + damping)) / damping, 1.0 / damping


def _damped_solve(
    L: Any, Q: Any, X: Any, damping: float, continuation: bool, xp: Any, *, check_finite: bool = True,
    rows: bool = False, overwrite_x: bool = False,
) -> Any:
    """Validated kernel (used by the trackers and preconditioners).

    ``rows=True`` applies the inverse from the right, ``X (Q L Q^T + lambda I)^{-1}`` for ``X``
    of shape (k, d): the same numbers as ``_damped_solve(..., X.T).T`` without the transposed
    operands, whose strided reads and writes cost a K-FAC step about three times the two GEMMs
    (measured on the 1024 x 1025 layer of the MLP benchmark). ``overwrite_x=True``: the caller
    owns ``X`` and the result may be written into it (no tall temporary in memory).

    On a distributed backend X is materialised once (it is read twice), the small ``Q^T X``
    is computed once and checked on the client (``check_finite``), and the result comes back
    persisted, chunked like X.
    """
    be = _backend.backend_of(Q, xp)
    if rows and not be.in_memory:
        # the distributed hooks contract tall arrays by their rows only
        return _damped_solve(L, Q, X.T, damping, continuation, xp, check_finite=check_finite).T
    coef, inv = _coefficients(L, damping, continuation, xp)
    vector = X.ndim == 1
    if vector:
        X = X[None, :] if rows else X[:, None]
    if check_finite:
        be.watch(("eigenvalues", L), ("eigenvectors", Q), ("X", X))
    X = be.persist(X)
    # In memory the product accumulates into X / lambda (the output, or X itself with
    # overwrite_x): no tall temporary.
    if rows or be.in_memory:
        Y, beta = (X, inv) if overwrite_x else (X * inv, 1.0)
        if rows:
            Y = _array.add_matmul(Y, (X @ Q) * coef[None, :], Q.T, xp, beta=beta)
            return Y[0, :] if vector else Y
        Y = _array.add_matmul(Y, Q, coef[:, None] * (Q.T @ X), xp, beta=beta)
        return Y[:, 0] if vector else Y
    Y = be.matmul(Q, coef[:, None] * be.small(Q.T @ X)) + X * inv
    return be.persist(Y[:, 0] if vector else Y)


def _damped_solve_blocks(L: Any, Q: Any, blocks: list[Any], damping: float, continuation: bool, xp: Any, *,
                         rows: bool, check_finite: str | None = None) -> list[Any]:
    """:func:`_damped_solve` in place on a matrix given as column blocks ``[X_1 ... X_p]``
    (in memory; the caller owns the blocks, which receive the result).

    ``rows=True``: ``X (Q L Q^T + lambda I)^{-1}`` with the rows of Q split like the columns of
    X, so the projections of the blocks add up (``X Q = sum_i X_i Q_i``) and each block takes
    its share of the product back; ``rows=False``: the inverse from the left, block by block.
    What a K-FAC step on ``[W b]`` needs without assembling ``[W b]`` (two copies of the
    gradient per step, measured as a third of lowrank_online.torch's own work).

    ``check_finite`` (``rows=True``; the name the error gives the blocks): ``NonFiniteError``,
    before any block is written, when they hold NaN or infinity. It is read off the k x r
    projection ``X Q``, r / d_in of the entries of X: a NaN or an infinity in row i of X makes
    row i of ``X Q`` NaN or infinite whatever Q holds (IEEE arithmetic: ``NaN q = NaN``,
    ``inf 0 = NaN``, and GEMM multiplies every pair), and a finite X whose projection
    overflows would give an overflowing step. Testing X itself cost lowrank_online.torch one
    pass over every gradient per step (a third of its own work at width 1024). Without held
    directions (r = 0) the blocks are tested.
    """
    coef, inv = _coefficients(L, damping, continuation, xp)
    if not rows:
        return [_array.add_matmul(X, Q, coef[:, None] * (Q.T @ X), xp, beta=inv) for X in blocks]
    parts, start = [], 0
    for X in blocks:
        parts.append(Q[start:start + X.shape[1], :])
        start += X.shape[1]
    with _array.quiet_floating_point():  # a non-finite projection is the finiteness test below
        S = blocks[0] @ parts[0]
        for X, Qi in zip(blocks[1:], parts[1:], strict=True):
            S = _array.add_matmul(S, X, Qi, xp)
    if check_finite is not None and not _array.all_finite(xp, *(blocks if Q.shape[1] == 0 else (S,))):
        raise _validate.NonFiniteError(f"`{check_finite}` contain NaN or infinity")
    S = S * coef[None, :]
    return [_array.add_matmul(X, S, Qi.T, xp, beta=inv) for X, Qi in zip(blocks, parts, strict=True)]
