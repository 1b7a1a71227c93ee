"""The Van Loan rearrangement and the dense nearest Kronecker sum.

Paper 002 (Koroko et al.), Sec. 3.1, Thm 3.1 (the "zigzag" operator, after Van Loan &
Pitsianis), translated to the row-major convention of ``docs/conventions.rst``.
"""

from __future__ import annotations

from typing import Any

from .. import _array, _linalg, _validate
from . import _checks
from .kronsum import KronSum

__all__ = ["kron_rearrange", "nearest_kron"]


def kron_rearrange(
    M: Any, left_shape: tuple[int, int], right_shape: tuple[int, int], *, check_finite: bool = True
) -> Any:
    r"""The rearrangement ``R(M)`` that turns Kronecker products into rank-one matrices.

    Parameters
    ----------
    M : array, shape (m1 m2, n1 n2)
        The matrix, seen as an ``m1 x n1`` grid of ``m2 x n2`` blocks.
    left_shape : (int, int)
        ``(m1, n1)``, the shape of the left factors ``L``.
    right_shape : (int, int)
        ``(m2, n2)``, the shape of the right factors ``R``.
    check_finite : bool, optional
        Check ``M`` for NaN and infinity. Default True.

    Returns
    -------
    array, shape (m1 n1, m2 n2)
        ``R(M)``, whose row ``i1 n1 + j1`` is the row-major ``vec`` of block ``(i1, j1)``.
        Same namespace, device and dtype as ``M``.

    Raises
    ------
    ValueError, TypeError
        On a shape that does not factor as stated, non-finite values or a non-floating dtype.

    Notes
    -----
    ``R(M)[i1 n1 + j1, i2 n2 + j2] = M[i1 m2 + i2, j1 n2 + j2]``, so that
    ``R(L ⊗ R) = vec(L) vec(R)^T`` and, ``R`` being a permutation of the entries,

    .. math:: \|M - L \otimes R\|_F = \|R(M) - \mathrm{vec}(L)\,\mathrm{vec}(R)^T\|_F

    for every ``L`` and ``R`` (paper 002, Thm 3.1 and eq. (7)). The paper's "zigzag" operator
    uses column-major ``vec`` and orders the blocks column by column; with row-major ``vec``
    both orders become row by row, which is this function. It is a reshape, a transpose of
    two axes and a reshape: ``O(m1 m2 n1 n2)`` memory traffic, no flops.

    References
    ----------
    .. [1] C. F. Van Loan, N. Pitsianis, "Approximation with Kronecker products", in Linear
       Algebra for Large Scale and Real-Time Applications (1993).
    .. [2] A. Koroko et al., ESAIM Proc. (2023), Sec. 3.1, Thm 3.1.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import kron_rearrange
    >>> L = xp.asarray([[1.0, 2.0], [3.0, 4.0]]); R = xp.asarray([[1.0, -1.0]])
    >>> M = xp.reshape(L[:, None, :, None] * R[None, :, None, :], (2, 4))  # kron(L, R)
    >>> kron_rearrange(M, (2, 2), (1, 2))  # vec(L) vec(R)^T
    Array([[ 1., -1.],
           [ 2., -2.],
           [ 3., -3.],
           [ 4., -4.]], dtype=array_api_strict.float64)
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp = _array.namespace(("M", M))
    _validate.check_array(M, "M", xp, ndim=2, finite=check_finite)
    (m1, n1), (m2, n2) = _check_shapes(M, left_shape, right_shape)
    return _rearrange(M, m1, n1, m2, n2, xp)


def _check_shapes(M: Any, left_shape: Any, right_shape: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    (m1, n1) = _checks.shape_pair(left_shape, "left_shape")
    (m2, n2) = _checks.shape_pair(right_shape, "right_shape")
    if tuple(M.shape) != (m1 * m2, n1 * n2):
        raise ValueError(
            f"`M` has shape {tuple(M.shape)} but left_shape {(m1, n1)} and right_shape {(m2, n2)} "
            f"need {(m1 * m2, n1 * n2)}"
        )
    return (m1, n1), (m2, n2)


def _rearrange(M: Any, m1: int, n1: int, m2: int, n2: int, xp: Any) -> Any:
    T = xp.reshape(M, (m1, m2, n1, n2))
    return xp.reshape(xp.permute_dims(T, (0, 2, 1, 3)), (m1 * n1, m2 * n2))


def nearest_kron(
    M: Any,
    left_shape: tuple[int, int],
    right_shape: tuple[int, int],
    *,
    terms: int = 1,
    check_finite: bool = True,
) -> KronSum:
    r"""Best approximation of ``M`` by a sum of ``terms`` Kronecker products (dense path).

    Parameters
    ----------
    M : array, shape (m1 m2, n1 n2)
        The matrix to approximate.
    left_shape, right_shape : (int, int)
        Shapes ``(m1, n1)`` and ``(m2, n2)`` of the factors.
    terms : int, optional
        Number of Kronecker products, ``1 <= terms <= min(m1 n1, m2 n2)``. Default 1.
    check_finite : bool, optional
        Check ``M`` for NaN and infinity. Default True.

    Returns
    -------
    KronSum
        Factors ``L_i = sqrt(s_i) mat(u_i)`` and ``R_i = sqrt(s_i) mat(v_i)`` from the leading
        singular triplets of ``R(M)``, in decreasing order of ``s_i``. The largest-magnitude
        entry of each ``L_i`` is positive; for a symmetric positive semi-definite ``M`` this
        makes the first pair positive semi-definite (paper 002, Prop. 3.2).

    Raises
    ------
    ValueError, TypeError
        On bad shapes, ``terms`` out of range, non-finite values or a non-floating dtype.

    Notes
    -----
    By :func:`kron_rearrange`'s identity, minimising ``|M - sum_i L_i ⊗ R_i|_F`` is the
    rank-``terms`` approximation of ``R(M)``, solved by its truncated SVD (Eckart-Young;
    paper 002, Thm 3.1 and Sec. 3.2). The error is
    ``sqrt(sum_{i > terms} s_i^2)`` exactly. Cost: one dense SVD of the
    ``m1 n1 x m2 n2`` matrix, ``O(m1 n1 m2 n2 min(m1 n1, m2 n2))`` flops and
    ``O(m1 n1 m2 n2)`` memory; this is the reference path. For Fisher blocks use
    :func:`kpsvd`, which never forms ``M``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import nearest_kron
    >>> L = xp.asarray([[2.0, 1.0], [1.0, 2.0]]); R = xp.asarray([[1.0, 0.5], [0.5, 1.0]])
    >>> M = xp.reshape(L[:, None, :, None] * R[None, :, None, :], (4, 4))
    >>> ks = nearest_kron(M, (2, 2), (2, 2))
    >>> float(xp.max(xp.abs(ks.to_dense() - M))) < 1e-12
    True
    """
    check_finite = _validate.check_bool(check_finite, "check_finite")
    xp = _array.namespace(("M", M))
    _validate.check_array(M, "M", xp, ndim=2, finite=check_finite)
    (m1, n1), (m2, n2) = _check_shapes(M, left_shape, right_shape)
    limit = min(m1 * n1, m2 * n2)
    terms = _validate.check_int(terms, "terms", minimum=1, maximum=limit)
    U, s, Vh = _linalg.small_svd(_rearrange(M, m1, n1, m2, n2, xp), xp)
    U, signs = _linalg.flip_signs(U[:, :terms] * 1.0, xp)
    Vh = Vh[:terms, :] * signs[:, None]
    root = xp.sqrt(s[:terms])
    left = tuple(xp.reshape(U[:, i] * root[i], (m1, n1)) for i in range(terms))
    right = tuple(xp.reshape(Vh[i, :] * root[i], (m2, n2)) for i in range(terms))
    return KronSum(left, right)
