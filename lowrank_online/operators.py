"""The matrix-free operator protocol.

Functions that only need products with a matrix (:func:`~lowrank_online.rsvd`,
:func:`~lowrank_online.reigh`, :meth:`~lowrank_online.LowRankEMA.refresh`, ...) accept either
an array or an *operator*: any object with

``shape``
    ``(m, n)``, a tuple of two ints.
``dtype``
    float32 or float64 of the operator's namespace.
``matmat(V)``
    returns ``X @ V`` for an array ``V`` of shape ``(n, k)``.
``rmatmat(U)``
    returns ``X.T @ U`` for ``U`` of shape ``(m, k)``. Optional for operators that are only
    passed where the matrix is symmetric (``reigh``, ``LowRankEMA.refresh`` / ``correct``).

and, optionally,

``__array_namespace__()``
    the namespace the products live in (as arrays have it); without it the namespace is the
    one passed as ``xp=``, else NumPy.
``device``
    the device of the products; default: the namespace's default device.

:class:`scipy.sparse.linalg.LinearOperator` satisfies the protocol as it is.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import array_api_compat

from . import _array, _validate

__all__ = ["LinearOperator"]


@runtime_checkable
class LinearOperator(Protocol):
    """Structural type of a matrix-free operator (see the module docstring)."""

    shape: tuple[int, int]
    dtype: Any

    def matmat(self, V: Any) -> Any: ...

    def rmatmat(self, U: Any) -> Any: ...


def _transposed_product(V: Any, X: Any, xp: Any) -> Any:
    """``X^T @ V`` as ``(V^T X)^T``: the same numbers, but BLAS streams a row-major ``X`` along
    its rows, 1.2-1.6x faster than through the transposed layout for a tall-skinny ``V``
    (measured with NumPy/OpenBLAS at d = 4096, 60 columns; with PyTorch/MKL 1.4-1.7x). On
    Dask, whose ``X`` is chunked by rows, ``X^T @ V`` is already a blockwise product and stays
    as it is."""
    if _array.is_lazy(xp):
        return X.T @ V
    return (V.T @ X).T


def _direct_product(X: Any, V: Any, xp: Any) -> Any:
    """``X @ V`` in the layout its BLAS runs fastest for a row-major ``X`` and a tall-skinny ``V``.

    OpenBLAS (NumPy) runs ``(V^T X^T)^T`` 1.3-1.8x faster than ``X @ V`` (one thread, d = 4096,
    16-60 columns: 40 ms against 72 ms at 30 columns); MKL (PyTorch's CPU build) is the other
    way round, ``X @ V`` being 1.0-1.3x faster than the transposed form and 2.1-2.2x faster than
    ``(V^T X)^T`` (38 ms against 81 ms). Other namespaces (CuPy's cuBLAS, Dask's blockwise
    product) get ``X @ V`` as written.
    """
    if _array.is_numpy(xp) or _array.is_strict(xp):
        return (V.T @ X.T).T
    return X @ V


class _Operand:
    """Arrays and operators behind one interface, with the namespace and device resolved."""

    def __init__(self, X: Any, name: str, xp: Any, check_finite: bool) -> None:
        check_finite = _validate.check_bool(check_finite, "check_finite")
        self.name = name
        self.check_finite = check_finite
        # An operator may expose __array_namespace__ like an array does: `matmat` tells them apart.
        if _array.is_array(X) and not callable(getattr(X, "matmat", None)):
            self.xp = _array.namespace((name, X), xp=xp)
            _validate.check_array(X, name, self.xp, ndim=2, finite=check_finite)
            (X,) = _array.align_tall((name, X), xp=self.xp)  # Dask: chunked by rows only
            self.array = X
            self.device = _array.device(X)
            self.dtype = X.dtype
            self.shape = (int(X.shape[0]), int(X.shape[1]))
            return
        if not (hasattr(X, "shape") and hasattr(X, "dtype") and callable(getattr(X, "matmat", None))):
            raise TypeError(
                f"`{name}` must be an array or an operator with `shape`, `dtype` and `matmat` "
                f"(see lowrank_online.operators), got {type(X).__name__}"
            )
        self.array = None
        self.op = X
        if hasattr(X, "__array_namespace__"):
            ns = X.__array_namespace__()
            ns = array_api_compat.array_namespace(ns.asarray(0.0)) if hasattr(ns, "asarray") else ns
            if xp is not None and _array.namespace(("xp", xp.asarray(0.0))) is not ns:
                raise TypeError(f"`xp` does not match the namespace of operator `{name}`")
            self.xp = ns
        elif xp is not None:
            self.xp = _array.namespace(("xp", xp.asarray(0.0)))
        else:
            import array_api_compat.numpy as np_xp

            self.xp = np_xp
        self.device = getattr(X, "device", None)
        if self.device is None:
            self.device = self.xp.__array_namespace_info__().default_device()
        try:
            shape = tuple(int(s) for s in X.shape)
        except (TypeError, ValueError):
            shape = ()
        if len(shape) != 2 or min(shape) < 0:
            raise ValueError(f"operator `{name}` must have a 2-D `shape`, got {X.shape!r}")
        self.shape = shape
        self.dtype = X.dtype
        _validate.check_float(X, name, self.xp)

    @property
    def is_array(self) -> bool:
        return self.array is not None

    def _checked(self, Y: Any, rows: int, cols: int, what: str) -> Any:
        if not _array.is_array(Y) or tuple(Y.shape) != (rows, cols):
            got = tuple(Y.shape) if hasattr(Y, "shape") else type(Y).__name__
            raise ValueError(f"operator `{self.name}`.{what} returned {got}, expected an array of shape {(rows, cols)}")
        if self.check_finite:
            _validate.check_finite(Y, f"{self.name}.{what}(...)", self.xp)
        return Y

    def matmat(self, V: Any) -> Any:
        if self.array is not None:
            return _direct_product(self.array, V, self.xp)
        return self._checked(self.op.matmat(V), self.shape[0], V.shape[1], "matmat")

    def rmatmat(self, U: Any) -> Any:
        if self.array is not None:
            return _transposed_product(U, self.array, self.xp)
        if not callable(getattr(self.op, "rmatmat", None)):
            raise TypeError(f"operator `{self.name}` has no `rmatmat`; it is needed for non-symmetric use")
        return self._checked(self.op.rmatmat(U), self.shape[1], U.shape[1], "rmatmat")

    def symmetric_matmat(self, V: Any) -> Any:
        """``X @ V`` for an ``X`` known to be symmetric, as ``X^T @ V`` or ``X @ V``, whichever
        layout the namespace's BLAS runs fastest: ``(V^T X)^T`` with NumPy (OpenBLAS), ``X @ V``
        with PyTorch (MKL: 2.1x faster than the transposed layout, see ``_direct_product``) and on
        Dask (the blockwise product that keeps X's rows)."""
        if self.array is not None and (_array.is_numpy(self.xp) or _array.is_strict(self.xp)):
            return _transposed_product(V, self.array, self.xp)
        return self.matmat(V)

    def dense(self) -> Any:
        """The explicit matrix (products with the identity for an operator)."""
        if self.array is not None:
            return self.array
        eye = self.xp.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.matmat(eye)


def as_operand(X: Any, name: str, *, xp: Any = None, check_finite: bool = True) -> _Operand:
    """Internal: wrap an array or operator argument after validating it."""
    check_finite = _validate.check_bool(check_finite, "check_finite")
    return _Operand(X, name, xp, check_finite)
