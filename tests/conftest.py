"""Fixtures (backends and devices, dtypes, the Dask cluster), hooks and the hypothesis profiles.

The helpers the tests import live in ``_helpers.py`` (``from _helpers import ...``).
"""

from __future__ import annotations

import os

import pytest
from _helpers import BACKEND_IDS, BACKENDS, namespace

os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "thorough", max_examples=500, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
except ImportError:  # pragma: no cover
    pass


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


@pytest.fixture(params=BACKENDS, ids=BACKEND_IDS)
def _backend(request):
    """A (namespace name, device) pair of ``_helpers.BACKENDS``."""
    return request.param


@pytest.fixture
def xp(_backend):
    """Every array-API namespace the library supports, on every device it has here: the CPU always,
    CUDA for PyTorch and CuPy when a CUDA device is usable (those runs skipped otherwise).

    For ``torch-cuda`` the test runs with CUDA as torch's default device, so arrays the test makes
    (``xp.asarray``, ``asarray(xp, ...)``, ``xp.zeros``...) are CUDA tensors without the test naming it.
    """
    name, device = _backend
    namespace_ = namespace(name, device)
    if name != "torch" or device == "cpu":
        yield namespace_
        return
    import torch

    before = torch.empty(0).device  # torch.get_default_device() is torch >= 2.3
    torch.set_default_device(device)
    try:
        yield namespace_
    finally:
        torch.set_default_device(before)


@pytest.fixture
def xp_device(_backend) -> str:
    """The device the ``xp`` run uses: ``"cpu"`` or ``"cuda"``."""
    return _backend[1]


@pytest.fixture(params=["float64", "float32"])
def dtype_name(request):
    return request.param
