"""Array plumbing: the one place that resolves namespaces, devices, dtypes and randomness.

Every public function of the library validates its arguments through the helpers here and
never re-implements them. Algorithms receive an already-resolved namespace ``xp`` and only
call functions of the Python array API standard on it, plus the hooks of :class:`~lowrank_online._backend.Backend`.

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
def check_float(x: Any, name: str, xp: Any) -> None:
    """Raise ``TypeError`` unless ``x`` has dtype float32 or float64."""
    dt = x.dtype
    if not any(dt == getattr(xp, f) for f in _FLOAT_NAMES):
        raise TypeError(f"`{name}` must have dtype float32 or float64, got {dt}")


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
# argument checks
# --------------------------------------------------------------------------------------------
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


def check_finite(x: Any, name: str, xp: Any) -> None:
    """Raise ``ValueError`` naming ``x`` if it holds NaN or infinity.

    Deferred on a lazy namespace: a pass over a distributed tall array costs as much as the
    update itself, so the Dask ``Backend`` checks every small core that comes back to the
    client instead, and names the argument when one is not finite (see ``Backend.watch``).
    """
    if is_lazy(xp):
        return
    if not array_api_compat.size(x):
        return
    if is_numpy(xp):
        finite = bool(xp.all(xp.isfinite(x)))
    else:
        # max and min propagate NaN (and carry +-inf): two reductions and no boolean temporary
        # as large as x. PyTorch's isfinite and the temporary it allocates are several times
        # slower on large tensors (docs/performance.rst, the PyTorch path of rsvd / reigh);
        # NumPy's isfinite is the faster of the two there and is kept.
        high, low = to_floats(xp, xp.max(x), xp.min(x))
        finite = math.isfinite(high) and math.isfinite(low)
    if not finite:
        raise ValueError(f"`{name}` contains NaN or infinity")


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
