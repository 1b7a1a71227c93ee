"""The helpers every test file imports (``from _helpers import ...``): the backends, the
tolerances stated once per dtype, and the comparisons built on them.

``tests/`` is on ``sys.path`` because pytest puts the folder of ``tests/conftest.py`` there
(``rootdir``-relative, the default ``prepend`` import mode); the fixtures and hooks stay in
``conftest.py``, which imports what it needs from here.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from lowrank_online import _array

# (namespace, device) pairs the ``xp`` fixture runs; CuPy arrays always live on a CUDA device.
BACKENDS = [
    ("numpy", "cpu"),
    ("array_api_strict", "cpu"),
    ("torch", "cpu"),
    ("torch", "cuda"),
    ("cupy", "cuda"),
]
# Test ids: the CPU runs keep the namespace's name, so ``-k numpy`` selects what it did before.
BACKEND_IDS = ["numpy", "array_api_strict", "torch", "torch-cuda", "cupy"]

# Tolerances, relative to the norm of the reference, stated once per dtype.
RTOL = {"float64": 1e-10, "float32": 2e-4}
# Orthonormality |V^T V - I|_max.
ORTH = {"float64": 1e-12, "float32": 2e-5}


def cupy_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "skip"
        return False


def torch_cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def namespace(name: str, device: str = "cpu"):
    """The array-API namespace ``name`` (skipping the test when it, or a CUDA device it needs, is missing)."""
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "array_api_strict":
        xp = pytest.importorskip("array_api_strict")
    elif name == "torch":
        pytest.importorskip("torch")
        if device == "cuda" and not torch_cuda_usable():
            pytest.skip("torch on CUDA needs a usable CUDA device")
        import array_api_compat.torch as xp
    elif name == "cupy":
        if not cupy_usable():
            pytest.skip("CuPy needs a usable CUDA device")
        import array_api_compat.cupy as xp
    else:  # pragma: no cover
        raise ValueError(name)
    return xp


def asarray(xp, a, dtype_name="float64"):
    """A NumPy array moved into ``xp`` with the given float dtype (on the namespace's default device)."""
    return xp.asarray(np.array(a, dtype=np.dtype(dtype_name), order="C", copy=True))


def to_np(x) -> np.ndarray:
    return np.asarray(_array.to_numpy(x), dtype=np.float64)


def assert_backend(result, xp, dtype_name, like=None):
    """Result lives in the caller's namespace (and device) with the caller's dtype."""
    import array_api_compat

    assert array_api_compat.array_namespace(result) is xp
    assert result.dtype == getattr(xp, dtype_name)
    if like is not None:
        assert _array.device(result) == _array.device(like)


def assert_orthonormal(V, dtype_name):
    V = to_np(V)
    err = np.abs(V.T @ V - np.eye(V.shape[1])).max() if V.shape[1] else 0.0
    assert err <= ORTH[dtype_name], f"|V^T V - I| = {err:.3g} > {ORTH[dtype_name]}"


def assert_matrix_close(actual, expected, dtype_name, factor=1.0):
    """|actual - expected|_F <= RTOL * factor * max(|expected|_F, tiny)."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    scale = max(np.linalg.norm(expected), np.finfo(float).tiny)
    err = np.linalg.norm(actual - expected)
    assert err <= RTOL[dtype_name] * factor * scale, (
        f"relative error {err / scale:.3g} > {RTOL[dtype_name] * factor:.3g}"
    )


def random_basis(rng, d, r):
    """A d x r orthonormal NumPy basis (r may be 0)."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, max(r, 1))))
    return Q[:, :r]


def increment_block(rng, Q, n, structure, *, scale_range=(0.0, -8.0)):
    """A d x n increment against the basis Q that exercises a path of the complement.

    ``generic``; ``duplicate`` (repeated columns); ``zero`` (a zero column); ``in_span`` (half
    the columns inside span(Q)); ``scaled`` (columns scaled by ``logspace(*scale_range, n)``);
    ``tiny`` (everything scaled by 1e-6).
    """
    d = Q.shape[0]
    A = rng.standard_normal((d, n))
    if structure == "duplicate" and n >= 2:
        A[:, n // 2 :] = A[:, : n - n // 2]
    elif structure == "zero":
        A[:, 0] = 0.0
    elif structure == "in_span" and Q.shape[1]:
        A[:, : max(1, n // 2)] = Q @ rng.standard_normal((Q.shape[1], max(1, n // 2)))
    elif structure == "scaled":
        A *= np.logspace(*scale_range, n)
    elif structure == "tiny":
        A *= 1e-6
    return A


def reference_flip(V: np.ndarray) -> np.ndarray:
    """The library's sign convention applied to a NumPy reference basis."""
    V = np.array(V, dtype=float)
    return V * np.where(V.max(axis=0) >= -V.min(axis=0), 1.0, -1.0)


def _load_measure():
    """``benchmarks/_measure.py`` (the bench tools' timer, flop models and Dask probes), loaded by
    path under its own name: importing it as ``benchmarks._measure`` would bind ``benchmarks`` to
    the repository's folder for the whole session and hide the asv suite's own ``benchmarks``
    package from the test that runs it."""
    if "_measure" in sys.modules:
        return sys.modules["_measure"]
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "_measure.py"
    spec = importlib.util.spec_from_file_location("_measure", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_measure"] = module
    spec.loader.exec_module(module)
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - no Dask either
        return module
    # The Dask workers cannot import a module loaded by path: its probes travel by value.
    cloudpickle.register_pickle_by_value(module)
    return module


measure = _load_measure()

