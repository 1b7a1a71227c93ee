"""Backend / dtype fixtures and the one set of tolerance helpers every test uses."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lowrank_online import _array

os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    )
    settings.register_profile(
        "thorough", max_examples=500, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
except ImportError:  # pragma: no cover
    pass


def _cupy_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "skip"
        return False


def _namespace(name: str):
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "array_api_strict":
        xp = pytest.importorskip("array_api_strict")
    elif name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp
    elif name == "cupy":
        if not _cupy_usable():
            pytest.skip("CuPy needs a usable CUDA device")
        import array_api_compat.cupy as xp
    else:  # pragma: no cover
        raise ValueError(name)
    return xp


BACKENDS = ["numpy", "array_api_strict", "torch", "cupy"]


@pytest.fixture(scope="session")
def client():
    """The Dask tests' cluster: two worker processes with one thread each (the 2-core machine of
    the issue), started once per session and shared by every test file that asks for it."""
    import logging

    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dask.array")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
        memory_limit="1GiB",
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """Run every test with one PyTorch thread, restoring the setting afterwards.

    The tests make many small products; on a 2-core machine PyTorch's OpenMP pool then contends
    with NumPy's OpenBLAS threads (busy-waiting after the NumPy references), and a 64 x 9 GEMM
    can take 10 ms instead of 10 us. One thread removes the contention; results do not depend
    on it.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=BACKENDS)
def xp(request):
    """Every array-API namespace the library supports (CuPy skipped without a GPU)."""
    return _namespace(request.param)


@pytest.fixture(params=["float64", "float32"])
def dtype_name(request):
    return request.param


# Tolerances, relative to the norm of the reference, stated once per dtype.
RTOL = {"float64": 1e-10, "float32": 2e-4}
# Orthonormality |V^T V - I|_max.
ORTH = {"float64": 1e-12, "float32": 2e-5}


def asarray(xp, a, dtype_name="float64"):
    """A NumPy array moved into ``xp`` with the given float dtype."""
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
    assert err <= RTOL[dtype_name] * factor * scale, f"relative error {err / scale:.3g} > {RTOL[dtype_name] * factor:.3g}"


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
