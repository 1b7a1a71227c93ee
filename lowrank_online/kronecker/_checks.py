"""Argument checks and small array helpers shared by the Kronecker toolkit.

They compose the core's checks (:mod:`lowrank_online._array`, :mod:`lowrank_online._validate`: namespace, device, dtype,
finiteness); nothing here re-implements them. Everything uses the row-major convention of
``docs/conventions.rst``: ``vec(X)`` is ``reshape(X, (-1,))``, and ``kron(L, R)`` acts as
``kron(L, R) @ vec(X) == vec(L @ X @ R.T)``.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _array, _validate

__all__: list[str] = []  # private module


def square(M: Any, name: str, xp: Any, *, check_finite: bool, size: int | None = None) -> None:
    """``M`` is a 2-D square floating array (of side ``size`` when given)."""
    _validate.check_array(M, name, xp, ndim=2, finite=check_finite)
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
        _validate.check_int(pair[0], f"{name}[0]", minimum=1),
        _validate.check_int(pair[1], f"{name}[1]", minimum=1),
    )


def identity_like(M: Any, xp: Any) -> Any:
    return xp.eye(M.shape[0], dtype=M.dtype, device=_array.device(M))


# --------------------------------------------------------------------------------------------
# power-of-two normalisation (scale safety)
# --------------------------------------------------------------------------------------------
# Factors of at most 2^100 per multiplication: representable in float32 and float64 alike.
_STEP = 100


def normalized(x: Any, name: str, xp: Any) -> tuple[Any, int]:
    """``(2^-e x, e)`` with ``max |2^-e x|`` in [1/2, 1); ``(x, 0)`` for a zero ``x``.

    The statistics of the toolkit enter its products squared or to the fourth power
    (``|a|^2 |g|^2``, ``a^T diag(.) a``...): normalised first, the products neither overflow
    nor underflow when the result is representable, and the result is scaled back by
    :func:`scaled` (powers of two: exact). Cost: two reductions and one copy of ``x``.
    """
    high, low = _array.to_floats(xp, xp.max(x), xp.min(x))  # max and -min: no |x| temporary
    top = max(high, -low)
    if not math.isfinite(top):  # check_finite=False with non-finite statistics
        raise ValueError(f"`{name}` contains NaN or infinity")
    e = math.frexp(top)[1] if top > 0.0 else 0
    return (scaled(x, -e) if e else x), e


def scaled(x: Any, e: int) -> Any:
    """``2^e x`` by factors of at most ``2^100`` (each representable in float32), exact
    unless the result leaves the dtype's range."""
    while e:
        step = max(-_STEP, min(_STEP, e))
        x = x * math.ldexp(1.0, step)
        e -= step
    return x


def kfac_pair(a: Any, g: Any, xp: Any) -> tuple[Any, Any]:
    """K-FAC's factors ``(g^T g / N, a^T a / N)``; ``ValueError`` when one overflows the dtype.

    Each factor carries the square of its side's scale (the Kronecker product needs both
    representable): a batch with ``|a| ~ 1e20`` in float32 has ``a^T a`` beyond the range even
    when ``F`` itself is not, and an infinite factor would be silent garbage downstream.
    """
    n = a.shape[0]
    with _array.quiet_floating_point():  # an overflow is seen on the result
        left, right = (g.T @ g) / n, (a.T @ a) / n
    for name, side, M in (("g", "E[g g^T]", left), ("a", "E[a a^T]", right)):
        if not _array.all_finite(xp, M):
            raise ValueError(f"the K-FAC factor {side} overflows {_array.dtype_name(M.dtype)}; rescale `{name}`")
    return left, right
