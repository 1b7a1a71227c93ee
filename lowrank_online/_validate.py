"""Validation at the public boundary: dtypes, shapes, finiteness, symmetry, flags, numbers.

Each helper raises ``ValueError`` / ``TypeError`` naming the argument. Namespaces and devices
are resolved by :mod:`lowrank_online._array`, on which these build.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._array import (
    _FLOAT_NAMES,
    all_finite,
    astype,
    device,
    eps,
    is_array,
    is_lazy,
    namespace,
    result_dtype,
    same_device,
    to_floats,
)

__all__: list[str] = []  # private module


def check_float(x: Any, name: str, xp: Any) -> None:
    """Raise ``TypeError`` unless ``x`` has dtype float32 or float64."""
    dt = x.dtype
    if not any(dt == getattr(xp, f) for f in _FLOAT_NAMES):
        raise TypeError(f"`{name}` must have dtype float32 or float64, got {dt}")


def check_detached(x: Any, name: str) -> None:
    """Refuse a tensor that still requires grad (``TypeError`` naming it).

    The stateful objects (trackers, preconditioners) keep what they are fed; a tensor that
    requires grad would make them hold, and grow with every update, an autograd graph (2,024
    nodes after 30 updates, measured). Refusing is clearer than detaching behind the caller's
    back: the caller decides (``a.detach()``).
    """
    if getattr(x, "requires_grad", False):
        raise TypeError(f"`{name}` requires grad: pass `{name}.detach()` (the library never differentiates "
                        "through its state, and holding the tensor would keep its autograd graph alive)")


def check_array(
    x: Any,
    name: str,
    xp: Any,
    *,
    ndim: int | tuple[int, ...],
    finite: bool = True,
) -> None:
    """Check dimensionality, floating dtype and (optionally) finiteness of an array argument."""
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"`{name}` must be {want}, got an array of shape {tuple(x.shape)}")
    check_float(x, name, xp)
    if finite:
        check_finite(x, name, xp)


def check_symmetric(X: Any, name: str, xp: Any) -> None:
    """Raise ``ValueError`` naming ``X`` when ``max |X - X^T| > sqrt(eps) max |X|`` (square ``X``).

    The scale is taken over the upper triangle: an entry that is large only below the diagonal
    makes the gap as large, so the test refuses the same matrices. In memory the upper triangle
    is compared with the lower one block row by block row (blocks of about 2^18 entries, no
    ``d x d`` temporary, one read of each triangle), about 3x faster than ``X - X^T`` at
    d = 4096 (70 ms against 200 ms with one thread). A lazy namespace gets one expression.
    """
    d = X.shape[0]
    if d == 0:
        return
    if is_lazy(xp):
        scale, gap = to_floats(xp, xp.max(xp.abs(X)), xp.max(xp.abs(X - X.T)))
    else:
        step = max(32, 2**18 // d)
        highs, gaps = [], []
        for i in range(0, d, step):
            j = min(i + step, d)  # in-bounds slices (the standard leaves the others unspecified)
            upper = X[i:j, i:]
            diff = upper - X[i:, i:j].T
            # max and -min instead of abs: no temporary for the absolute values.
            highs += [xp.max(upper), -xp.min(upper)]
            gaps += [xp.max(diff), -xp.min(diff)]
        scale, gap = to_floats(xp, xp.max(xp.stack(highs)), xp.max(xp.stack(gaps)))
    if gap > eps(xp, X.dtype) ** 0.5 * scale:
        raise ValueError(
            f"`{name}` must be symmetric; max |{name} - {name}^T| = {gap:.3g} exceeds sqrt(eps) * max |{name}|"
        )


def check_symmetric_sketch(C: Any, name: str, xp: Any, eps_x: float) -> None:
    """Raise ``ValueError`` naming ``X`` when the sketch ``C = G^T X G`` shows X is not symmetric.

    ``G`` (d x k, k >= 2) must have independent standard Gaussian columns, drawn independently
    of X. For ``i != j`` and any matrix A, ``E[(g_i^T A g_j)^2] = |A|_F^2``; so
    ``|C - C^T|_F / |offdiag(C)|_F`` estimates ``|X - X^T|_F / |X|_F`` from ``k (k - 1)``
    samples, and X is refused when the estimate exceeds ``sqrt(eps_x)`` (``eps_x``: the
    machine epsilon of X's dtype, whatever the core's dtype is). The diagonal of C is
    left out of the scale: it carries ``trace(X)``, which would dilute the test by up to
    ``sqrt(d / k)`` on a flat spectrum. Cost ``O(k^2)`` on the small core; the caller pays
    ``2 d k^2`` for ``C`` from a product it computes anyway, where the entrywise
    :func:`check_symmetric` reads X once more (about one product's time).
    """
    k = C.shape[0]
    off = C * (1.0 - xp.eye(k, dtype=C.dtype, device=device(C)))
    gap, scale = to_floats(xp, xp.linalg.matrix_norm(C - C.T), xp.linalg.matrix_norm(off))
    if gap > eps_x**0.5 * scale:
        raise ValueError(
            f"`{name}` must be symmetric; |{name} - {name}^T|_F / |{name}|_F is about {gap / scale:.3g} "
            "(estimated from the first sketch), above sqrt(eps)"
        )


class NonFiniteError(ValueError):
    """The ``ValueError`` of an argument that holds NaN or infinity: its own class for the
    callers that skip such input instead of failing (lowrank_online.torch leaves a non-finite
    gradient unpreconditioned for the GradScaler to skip)."""


def check_finite(x: Any, name: str, xp: Any) -> None:
    """Raise ``ValueError`` naming ``x`` if it holds NaN or infinity.

    Deferred on a lazy namespace: a pass over a distributed tall array costs as much as the
    update itself, so the Dask ``Backend`` checks every small core that comes back to the
    client instead, and names the argument when one is not finite (see ``Backend.watch``).
    """
    if not is_lazy(xp) and not all_finite(xp, x):
        raise NonFiniteError(f"`{name}` contains NaN or infinity")


def check_int(
    value: Any, name: str, *, minimum: int = 1, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """Validate an integer parameter (``bool`` is rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        rng = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"`{name}` must be an integer {rng}, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Validate a flag: ``True`` or ``False`` (NumPy's ``bool_`` too), not a truthy value
    such as ``"no"``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}")


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a finite real scalar parameter within an interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if is_array(value) and getattr(value, "ndim", None) == 0:
            value = float(value)
        else:
            raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    bad = (
        (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    )
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ValueError(f"`{name}` must lie in {interval}, got {value}")
    return value


def check_statistics(a: Any, g: Any, *, check_finite: bool = True, promote: bool = True,
                     xp: Any = None) -> tuple[Any, Any, Any]:
    """Validate the per-sample statistics of a layer: activations ``a`` (N x d_a) and gradients
    ``g`` (N x d_g), one row per sample, in one namespace and on one device.

    Returns ``(xp, a, g)``: with ``promote`` both arrays in their promoted floating dtype,
    otherwise a ``TypeError`` when their dtypes differ (a stateful caller keeps one dtype).
    """
    names = (("a", a), ("g", g))
    xp = namespace(*names, xp=xp)
    same_device(*names)
    check_array(a, "a", xp, ndim=2, finite=check_finite)
    check_array(g, "g", xp, ndim=2, finite=check_finite)
    if a.shape[0] != g.shape[0]:
        raise ValueError(f"`a` has {a.shape[0]} rows but `g` has {g.shape[0]}; both hold one row per sample")
    if a.shape[0] == 0:
        raise ValueError("`a` and `g` hold no samples (zero rows)")
    if a.shape[1] == 0 or g.shape[1] == 0:
        raise ValueError(f"`a` and `g` need at least one column, got shapes {tuple(a.shape)} and {tuple(g.shape)}")
    if not promote:
        if a.dtype != g.dtype:
            raise TypeError(f"`a` has dtype {a.dtype} but `g` has {g.dtype}")
        return xp, a, g
    dt = result_dtype(xp, a, g)
    return xp, astype(a, dt, xp), astype(g, dt, xp)

