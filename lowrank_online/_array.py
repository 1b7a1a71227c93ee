"""Array plumbing: the one place that resolves namespaces, devices, dtypes and randomness.

Every public function of the library resolves its arguments' namespace and device here and
validates them with :mod:`lowrank_online._validate` (built on this module), and never
re-implements either. Algorithms receive an already-resolved namespace ``xp`` and only call
functions of the Python array API standard on it, plus the hooks of
:class:`~lowrank_online._backend.Backend`.

Lazy, distributed namespaces (Dask) are recognised here and served by an *execution module*
found through a registry (:func:`execution`), loaded on first use: :func:`align_tall` checks
and aligns row chunks, :func:`check_finite` defers to the small cores, :func:`to_floats`
fetches several scalars in one round trip, and ``_backend.backend`` picks the execution's
:class:`~lowrank_online._backend.Backend`. This module imports no execution module (they
import it), so the layers stay acyclic.
"""

from __future__ import annotations

import importlib
import math
import numbers
from typing import Any

import array_api_compat
import numpy as np

__all__: list[str] = []  # private module

_FLOAT_NAMES = ("float32", "float64")


# --------------------------------------------------------------------------------------------
# namespaces and devices
# --------------------------------------------------------------------------------------------
def _namespace_name(xp: Any) -> str:
    name = getattr(xp, "__name__", repr(xp))
    return name.replace("array_api_compat.", "")


def is_array(x: Any) -> bool:
    """True for an array of any array-API namespace (NumPy, CuPy, PyTorch, array-api-strict...)."""
    return array_api_compat.is_array_api_obj(x)


def namespace(*named: tuple[str, Any], xp: Any = None) -> Any:
    """Resolve the single namespace shared by the named arrays.

    ``named`` holds ``(argument name, value)`` pairs; ``None`` values are skipped. Raises
    ``TypeError`` naming the first argument that is not an array, or the pair of arguments
    that come from different namespaces.
    """
    found_name, found = None, None
    for name, value in named:
        if value is None:
            continue
        if not is_array(value):
            raise TypeError(
                f"`{name}` must be an array of an array-API namespace (NumPy, CuPy, PyTorch...), "
                f"got {type(value).__name__}"
            )
        ns = array_api_compat.array_namespace(value)
        if found is None:
            found_name, found = name, ns
        elif ns is not found:
            raise TypeError(
                f"`{name}` is a {_namespace_name(ns)} array but `{found_name}` is a "
                f"{_namespace_name(found)} array; pass arrays of one namespace"
            )
    if xp is not None:
        xp = array_api_compat.array_namespace(xp.asarray(0.0)) if hasattr(xp, "asarray") else xp
        if found is not None and xp is not found:
            raise TypeError(
                f"`xp` is {_namespace_name(xp)} but `{found_name}` is a {_namespace_name(found)} array"
            )
        return xp
    if found is None:
        raise TypeError("no array argument to take the array namespace from")
    return found


def device(x: Any) -> Any:
    """Device of an array (array-api-compat's portable accessor)."""
    return array_api_compat.device(x)


def same_device(*named: tuple[str, Any]) -> Any:
    """Return the common device of the named arrays, or raise ``ValueError`` naming the culprit."""
    found_name, found = None, None
    for name, value in named:
        if value is None:
            continue
        dev = device(value)
        if found_name is None:
            found_name, found = name, dev
        elif dev != found:
            raise ValueError(
                f"`{name}` is on device {dev!r} but `{found_name}` is on device {found!r}; "
                "move them to one device"
            )
    return found


def is_numpy(xp: Any) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def add_matmul(Y: Any, A: Any, B: Any, xp: Any, *, beta: float = 1.0) -> Any:
    """``beta Y + A @ B``, accumulated into ``Y`` (which the caller owns: it is overwritten).

    PyTorch on the CPU hands large blocks back to the system when they are freed, so every
    fresh tall temporary pays its page faults again: a 1024 x 1025 float32 product with a
    rank-64 inner dimension costs about 2.5 times as much allocated as accumulated, and the
    scaling rides along (``addmm_``). Other namespaces scale in place and add the product
    (cached allocators on GPUs).
    """
    if array_api_compat.is_torch_namespace(xp):
        return Y.addmm_(A, B, beta=beta)
    if beta != 1.0:
        Y *= beta
    Y += A @ B
    return Y


def is_strict(xp: Any) -> bool:
    """True for array-api-strict (NumPy underneath: NumPy's BLAS layouts apply)."""
    return getattr(xp, "__name__", "") == "array_api_strict"


# The execution strategies of lazy namespaces: the array-api-compat test that recognises the
# namespace, and the private module that implements the hooks (``Backend``, ``align_tall``,
# ``to_floats``, ``from_host``). Imported on first use: importing the library never imports
# Dask, and the execution module, which builds on this one, is not imported from here.
_LAZY_EXECUTIONS: tuple[tuple[Any, str], ...] = ((array_api_compat.is_dask_namespace, "lowrank_online._dask"),)


def execution(xp: Any) -> Any:
    """The execution module of a lazy namespace, or None for an in-memory one."""
    for recognises, module in _LAZY_EXECUTIONS:
        if recognises(xp):
            return importlib.import_module(module)
    return None


def is_lazy(xp: Any) -> bool:
    """True for a namespace whose arrays are task graphs evaluated on demand (Dask)."""
    return any(recognises(xp) for recognises, _ in _LAZY_EXECUTIONS)


def align_tall(*named: tuple, xp: Any) -> tuple[Any, ...]:
    """Check the chunking of the tall arguments of one computation and align their rows.

    ``named`` holds ``(argument name, array)`` or ``(argument name, array, tall axis)``
    entries (tall axis 0 unless given); the first is the reference. In-memory namespaces
    return the arrays as given. On Dask every tall array must have its other dimension in one
    chunk and known chunk sizes (``ValueError`` naming the argument otherwise); an argument
    whose row chunks differ from the reference's is rechunked to them (a single pass over
    that argument, which is the new data, never the held factor).
    """
    lazy = execution(xp)
    if lazy is None:
        return tuple(entry[1] for entry in named)
    return lazy.align_tall(named)


def one_chunk(x: Any, axis: int, xp: Any) -> Any:
    """``x`` with its dimension ``axis`` in a single chunk.

    The identity in memory. On a lazy namespace a short dimension split into several chunks
    (the samples of a wide batch whose features are chunked) is merged, one pass over ``x``;
    the algorithms then see tall arrays whose other dimension is one chunk, as they require.
    """
    if not is_lazy(xp) or len(x.chunks[axis]) <= 1:
        return x
    return x.rechunk({axis: -1})


def column_signs(V: Any, xp: Any) -> Any:
    """The library's sign convention: +1 for a column whose largest-magnitude entry is
    positive (``max >= -min``, ties towards +), else -1."""
    positive = xp.max(V, axis=0) >= -xp.min(V, axis=0)
    one = xp.ones((V.shape[1],), dtype=V.dtype, device=device(V))
    return xp.where(positive, one, -one)


def to_floats(xp: Any, *scalars: Any) -> tuple[float, ...]:
    """Python floats of 0-d arrays; a lazy namespace fetches them all in one round trip."""
    lazy = execution(xp)
    if lazy is not None:
        return lazy.to_floats(scalars)
    return tuple(float(x) for x in scalars)


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------
def all_finite(xp: Any, *arrays: Any) -> bool:
    """Whether every entry of ``arrays`` is finite: the library's one finiteness test.

    PyTorch and CuPy arrays take max and min, which propagate NaN and carry the infinities:
    two reductions and no boolean temporary as large as ``x``; PyTorch's
    ``isfinite(x).all()`` is 3 to 10 times slower on the CPU (about 100 us against 21 us on a
    320 x 320 core, 330 us against 35 us at 1025 x 320). Everything else (NumPy, whose
    ``isfinite`` is the faster there, array-api-strict, lazy arrays) takes ``all(isfinite(x))``.
    """
    for x in arrays:
        if not array_api_compat.size(x):
            continue
        if array_api_compat.is_torch_array(x) or array_api_compat.is_cupy_array(x):
            high, low = to_floats(xp, xp.max(x), xp.min(x))
            if not (math.isfinite(high) and math.isfinite(low)):
                return False
        elif not bool(xp.all(xp.isfinite(x))):
            return False
    return True


def result_dtype(xp: Any, *arrays: Any) -> Any:
    """Floating dtype of a computation over ``arrays``: the standard's type promotion."""
    return xp.result_type(*[a.dtype for a in arrays if a is not None])


def dtype_name(dtype: Any) -> str:
    """The standard's name of a dtype of any namespace (``"float64"``, ``"float32"``...)."""
    try:
        return np.dtype(dtype).name  # NumPy and CuPy dtypes, and NumPy's scalar classes
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]  # torch.float32, array_api_strict.float64


def is_float32(xp: Any, dtype: Any) -> bool:
    return dtype == xp.float32


def core_dtype(xp: Any, dev: Any) -> Any:
    """dtype for the small core factorizations: float64 wherever the device supports it.

    The (r+n)-sized cores are upcast because it buys digits for float32 inputs at no
    measurable cost; the tall factors stay in the input dtype (see lessons-from-peers).
    """
    try:
        dtypes = xp.__array_namespace_info__().dtypes(device=dev)
        if "float64" not in dtypes:
            return xp.float32
    except (AttributeError, TypeError, ValueError):  # namespaces without inspection API
        pass
    return xp.float64


def eps(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).eps)


def smallest_normal(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).smallest_normal)


def quiet_floating_point() -> Any:
    """A context in which NumPy (and the namespaces built on it) does not warn about overflow,
    underflow, division by zero or invalid operations.

    For a product whose result is checked for over- and underflow right after and formed
    again, scaled, when it was hit: the warning would report a case that is handled. Other
    namespaces never warn; NumPy's ``errstate`` is context-local, so other threads keep their
    settings.
    """
    return np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore")


def astype(x: Any, dtype: Any, xp: Any) -> Any:
    """Cast without copying when the dtype already matches."""
    if x.dtype == dtype:
        return x
    return xp.astype(x, dtype)


# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------
def as_generator(seed: Any) -> np.random.Generator:
    """``None | int | numpy.random.Generator`` -> a NumPy Generator (never the global RNG)."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"`seed` must be None, an int or a numpy.random.Generator, got {type(seed).__name__}"
        )
    if seed < 0:
        raise ValueError(f"`seed` must be non-negative, got {seed}")
    return np.random.default_rng(int(seed))


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, xp: Any, dev: Any) -> Any:
    """Gaussian draw made on the host and moved to ``dev``.

    Drawing with NumPy's generator makes one seed give the same numbers on every backend
    (the way scikit-learn's ``randomized_range_finder`` does); the draw is made directly in
    the target precision so float32 runs never hold a float64 copy of a tall matrix.
    """
    host_dtype = np.float32 if is_float32(xp, dtype) else np.float64
    values = rng.standard_normal(shape, dtype=host_dtype)
    return xp.asarray(values, device=dev)


def choice(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` distinct indices out of ``range(n)``, sorted, drawn on the host."""
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def to_numpy(x: Any) -> np.ndarray:
    """Host copy of an array of any namespace (for checkpoints and reports, never the hot path).

    A Dask array is computed and gathered on the client.
    """
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_dask_array(x):
        return np.asarray(x.compute())
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        # array-api-strict arrays on a non-default device refuse __array__: go via the buffer
        # of the default device.
        xp = array_api_compat.array_namespace(x)
        return np.asarray(xp.asarray(x, device=xp.__array_namespace_info__().default_device()))


def from_host(x: Any, xp: Any, device: Any = None, *, rows: Any = None) -> Any:
    """Move a host (NumPy) array into ``xp``; on Dask, chunk its rows by ``rows``.

    ``rows`` (Dask only): the row chunks, an int or a tuple of ints; default Dask's automatic
    choice. The other dimension stays in one chunk, as the algorithms require.
    """
    lazy = execution(xp)
    if lazy is not None:
        return lazy.from_host(x, rows)
    return xp.asarray(x, device=device) if device is not None else xp.asarray(x)
