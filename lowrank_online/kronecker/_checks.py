"""Argument checks and small array helpers shared by the Kronecker toolkit.

They compose the core's :mod:`lowrank_online._array` checks (namespace, device, dtype,
finiteness); nothing here re-implements them. Everything uses the row-major convention of
``docs/conventions.rst``: ``vec(X)`` is ``reshape(X, (-1,))``, and ``kron(L, R)`` acts as
``kron(L, R) @ vec(X) == vec(L @ X @ R.T)``.
"""

from __future__ import annotations

from typing import Any

from .. import _array

__all__: list[str] = []  # private module


def statistics(a: Any, g: Any, *, check_finite: bool, xp: Any = None) -> tuple[Any, Any, Any]:
    """Validate per-sample activations ``a`` (N x d_a) and gradients ``g`` (N x d_g).

    Returns ``(xp, a, g)`` with both arrays in their promoted floating dtype.
    """
    names = (("a", a), ("g", g))
    xp = _array.namespace(*names, xp=xp)
    _array.same_device(*names)
    _array.check_array(a, "a", xp, ndim=2, finite=check_finite)
    _array.check_array(g, "g", xp, ndim=2, finite=check_finite)
    if a.shape[0] != g.shape[0]:
        raise ValueError(
            f"`a` has {a.shape[0]} rows but `g` has {g.shape[0]}; both hold one row per sample"
        )
    if a.shape[0] == 0:
        raise ValueError("`a` and `g` hold no samples (zero rows)")
    if a.shape[1] == 0 or g.shape[1] == 0:
        raise ValueError(
            f"`a` and `g` need at least one column, got shapes {tuple(a.shape)} and {tuple(g.shape)}"
        )
    dt = _array.result_dtype(xp, a, g)
    return xp, _array.astype(a, dt, xp), _array.astype(g, dt, xp)


def square(M: Any, name: str, xp: Any, *, check_finite: bool, size: int | None = None) -> None:
    """``M`` is a 2-D square floating array (of side ``size`` when given)."""
    _array.check_array(M, name, xp, ndim=2, finite=check_finite)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"`{name}` must be square, got shape {tuple(M.shape)}")
    if size is not None and M.shape[0] != size:
        raise ValueError(f"`{name}` must be {size} x {size}, got shape {tuple(M.shape)}")


def shape_pair(value: Any, name: str) -> tuple[int, int]:
    """A ``(rows, cols)`` pair of positive integers."""
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a pair of positive integers, got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"`{name}` must be a pair (rows, cols), got {value!r}")
    return (
        _array.check_int(pair[0], f"{name}[0]", minimum=1),
        _array.check_int(pair[1], f"{name}[1]", minimum=1),
    )


def kron(L: Any, R: Any, xp: Any) -> Any:
    """Dense Kronecker product (the array API standard has no ``kron``)."""
    m1, n1 = L.shape
    m2, n2 = R.shape
    return xp.reshape(L[:, None, :, None] * R[None, :, None, :], (m1 * m2, n1 * n2))


def symmetrize(M: Any) -> Any:
    return (M + M.T) / 2


def identity_like(M: Any, xp: Any) -> Any:
    return xp.eye(M.shape[0], dtype=M.dtype, device=_array.device(M))
