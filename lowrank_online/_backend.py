"""Where a computation's tall arrays and its small cores live: a precision policy and an execution.

* :class:`Precision`: the caller's namespace, device and dtype for the tall arrays, and the
  core dtype (float64 where the device has it) of the small matrices that are factorized, with
  the casts between them. All that the Kronecker toolkit needs.
* :class:`Backend`: a :class:`Precision` plus the execution hooks of the streaming and
  randomized kernels (persist, detach, prefetch, watch, the dense fallbacks...), identities in
  memory. A lazy namespace's execution module (found by ``_array.execution``) subclasses it;
  :func:`backend` picks the class, so no constructor dispatches on its arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _array
from ._array import all_finite, astype, column_signs, core_dtype, device, eps, standard_normal

__all__: list[str] = []  # private module


class Precision:
    """The tall arrays' namespace, device and dtype, and the small cores' dtype.

    The algorithms split their work into *tall* arrays (d x k, in the caller's namespace,
    device and dtype, never gathered or upcast) and small *cores* ((r+n)-sized matrices that
    are factorized). ``to_core`` turns the small result of a tall product into a core array
    (float64 where the device has it); ``from_core`` turns a core array into an operand for
    tall products, or an output, in the caller's namespace and dtype. For in-memory
    namespaces both are dtype casts.
    """

    def __init__(self, xp: Any, dev: Any, dtype: Any, *, like: Any = None) -> None:
        self.xp = xp
        self.device = dev
        self.dtype = dtype
        self.cxp = xp
        self.cdtype = core_dtype(xp, dev)
        self.eps = eps(xp, dtype)

    def to_core(self, *xs: Any) -> Any:
        if len(xs) == 1:
            return astype(xs[0], self.cdtype, self.xp)
        return tuple(astype(x, self.cdtype, self.xp) for x in xs)

    def from_core(self, x: Any) -> Any:
        return astype(x, self.dtype, self.xp)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """Core zeros."""
        return self.cxp.zeros(shape, dtype=self.cdtype, device=self.device)

    def eye(self, k: int) -> Any:
        """Core identity."""
        return self.cxp.eye(k, dtype=self.cdtype, device=self.device)

    def count(self, mask: Any) -> int:
        """Number of true entries of a core boolean vector."""
        return int(self.cxp.sum(astype(mask, self.cxp.int32, self.cxp)))


class Backend(Precision):
    """A :class:`Precision` with the execution hooks of the in-memory namespaces.

    A distributed namespace's execution module subclasses it (:func:`backend` picks the
    subclass through ``_array.execution``): the Dask one computes the small cores on the
    cluster, fetches them to the client (NumPy, float64) and embeds the results back into the
    graph. The hooks the algorithms call, and what they do there:

    ``to_core(*xs)``
        one round trip for all of ``xs`` (a tuple when several).
    ``matmul(a, b)``
        ``a @ b`` where the contracted dimension is short (a tall array times a small core):
        one task per row block, with no reduction.
    ``residual(A, Q, C)``
        ``A - Q @ C``, the projection residual: one task per row block.
    ``persist(*xs)``
        materialise tall intermediates that are read more than once, so that no pass
        recomputes the graph of another; the identity in memory.
    ``detach(*xs)``
        materialise the outputs of a call and cut them loose from the graph that produced
        them (a stream of updates would otherwise chain every graph to the previous one);
        the identity in memory.
    ``prefetch(*xs)``
        ride small arrays along with the next ``to_core`` round trip; a no-op in memory.
    ``watch(*named)``
        name the inputs whose finiteness was deferred: a non-finite core then raises
        ``ValueError`` naming the culprit; a no-op in memory (inputs are checked up front).
    ``small(x)``
        a small intermediate computed once and kept in the tall namespace and dtype.
    ``join_columns(arrays)``
        ``[Q W]`` with each row block in one chunk.
    ``normal(rng, shape)``
        a tall Gaussian draw with the rows of the reference array, same numbers as NumPy.
    ``local(x)`` / ``distribute(y)``
        the dense fallbacks of small problems: a local copy and its namespace, and back.
    ``all_finite(*xs)``
        whether tall-namespace arrays are finite (no round trip for embedded cores).
    ``column_signs(V)``
        the signs of the library's sign convention (one reduction on a distributed backend).
    ``in_memory``
        True here; False for a distributed namespace, whose hooks contract tall arrays by
        their rows only (a kernel with another layout falls back to one that has it).
    """

    in_memory = True

    def matmul(self, a: Any, b: Any) -> Any:
        return a @ b

    def residual(self, A: Any, Q: Any, C: Any) -> Any:
        # The small factor is negated so that the tall product is the only temporary.
        W = Q @ (-C)
        W += A
        return W

    def persist(self, *xs: Any) -> Any:
        return xs[0] if len(xs) == 1 else xs

    def detach(self, *xs: Any) -> Any:
        return xs[0] if len(xs) == 1 else xs

    def prefetch(self, *xs: Any) -> None:
        pass

    def watch(self, *named: tuple[str, Any]) -> None:
        pass

    def small(self, x: Any) -> Any:
        return x

    def join_columns(self, arrays: list[Any]) -> Any:
        return self.xp.concat(arrays, axis=1)

    def normal(self, rng: np.random.Generator, shape: tuple[int, ...]) -> Any:
        return standard_normal(rng, shape, self.dtype, self.xp, self.device)

    def local(self, x: Any) -> tuple[Any, Any]:
        return x, self.xp

    def distribute(self, x: Any, *, tall: bool = False) -> Any:
        return x

    def all_finite(self, *xs: Any) -> bool:
        return all_finite(self.xp, *xs)

    def column_signs(self, V: Any) -> Any:
        return column_signs(V, self.xp)


def precision_of(x: Any, xp: Any) -> Precision:
    """The :class:`Precision` of the namespace, device and dtype of ``x``."""
    return Precision(xp, device(x), x.dtype)


def backend(xp: Any, dev: Any, dtype: Any, *, like: Any = None) -> Backend:
    """The :class:`Backend` of ``xp``: the execution module's subclass for a lazy namespace
    (``like``: a reference array whose row chunks the tall results follow)."""
    lazy = _array.execution(xp)
    cls = Backend if lazy is None else lazy.Backend
    return cls(xp, dev, dtype, like=like)


def backend_of(x: Any, xp: Any) -> Backend:
    """:func:`backend` for the namespace, device and dtype of ``x``."""
    return backend(xp, device(x), x.dtype, like=x)
