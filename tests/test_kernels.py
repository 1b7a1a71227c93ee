"""Private plumbing and kernels: fallbacks, sign convention, RNG, devices without float64."""

from __future__ import annotations

import types

import numpy as np
import pytest
from _helpers import asarray, to_np

from lowrank_online import DecompositionError, _array, _backend, _linalg, _validate, eigh_update


class _Failing(types.SimpleNamespace):
    """A namespace whose linalg.eigh / linalg.svd misbehave on demand."""


def _wrapped(xp, eigh=None, svd=None):
    linalg = types.SimpleNamespace(**{k: getattr(xp.linalg, k) for k in dir(xp.linalg) if not k.startswith("_")})
    if eigh is not None:
        linalg.eigh = eigh
    if svd is not None:
        linalg.svd = svd
    ns = _Failing(**{k: getattr(xp, k) for k in dir(xp) if not k.startswith("__")})
    ns.linalg = linalg
    return ns


def _raise(*args, **kwargs):
    raise np.linalg.LinAlgError("did not converge")


def _nan_eigh(M):
    import array_api_compat.numpy as npx

    w, V = npx.linalg.eigh(M)
    return w * np.nan, V


def test_small_eigh_falls_back_to_svd_then_raises():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(0)
    B = rng.standard_normal((6, 4))
    M = xp.asarray(B @ B.T)
    ref = np.linalg.eigvalsh(B @ B.T)[::-1]
    for broken in (_raise, _nan_eigh):
        w, V = _linalg.small_eigh(M, _wrapped(xp, eigh=broken))
        np.testing.assert_allclose(w, ref, atol=1e-12)
        np.testing.assert_allclose(V @ np.diag(w) @ V.T, B @ B.T, atol=1e-12)
    with pytest.raises(DecompositionError, match="did not converge|failed"):
        _linalg.small_eigh(M, _wrapped(xp, eigh=_raise, svd=_raise))


def test_small_svd_falls_back_to_jordan_wielandt():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(1)
    M = rng.standard_normal((5, 3))
    U, s, Vh = _linalg.small_svd(xp.asarray(M), _wrapped(xp, svd=_raise))
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(U @ np.diag(s) @ Vh, M, atol=1e-12)


def test_flip_signs_makes_largest_entry_positive(xp):
    V = asarray(xp, [[0.1, -3.0], [-2.0, 1.0], [0.5, 2.0]])
    out, signs = _linalg.flip_signs(V, xp)
    np.testing.assert_array_equal(to_np(out), [[-0.1, 3.0], [2.0, -1.0], [-0.5, -2.0]])
    np.testing.assert_array_equal(to_np(signs), [-1.0, -1.0])


def test_orthonormalize_handles_rank_deficiency(xp):
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((30, 3))
    Y = np.concatenate([Y, Y[:, :2]], axis=1)  # rank 3, five columns: Householder fallback
    Ya = asarray(xp, Y)
    P = to_np(_linalg.orthonormalize(Ya, _backend.backend_of(Ya, xp)))
    assert np.abs(P.T @ P - np.eye(5)).max() < 1e-12
    assert np.linalg.norm(Y - P @ (P.T @ Y)) < 1e-12 * np.linalg.norm(Y)


def test_standard_normal_is_identical_on_every_backend(xp, dtype_name):
    dev = _array.device(xp.asarray(0.0))
    dt = getattr(xp, dtype_name)
    a = _array.standard_normal(_array.as_generator(5), (4, 3), dt, xp, dev)
    b = np.random.default_rng(5).standard_normal((4, 3), dtype=np.dtype(dtype_name))
    np.testing.assert_array_equal(to_np(a), b.astype(float))
    assert a.dtype == dt


def test_device_without_float64_keeps_the_core_in_float32():
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device("no_float64")
    assert _array.core_dtype(xs, dev) == xs.float32
    rng = np.random.default_rng(3)
    Q = xs.asarray(np.linalg.qr(rng.standard_normal((10, 2)))[0].astype(np.float32), device=dev)
    A = xs.asarray(rng.standard_normal((10, 3)).astype(np.float32), device=dev)
    res = eigh_update(xs.asarray(np.array([2.0, 1.0], np.float32), device=dev), Q, A)
    assert res.eigenvectors.device == dev and res.eigenvalues.dtype == xs.float32


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "match"),
    [
        (True, {}, TypeError, "must be a real number"),
        (float("nan"), {}, ValueError, "must be finite"),
        (0.0, {"low": 0.0, "low_open": True}, ValueError, r"must lie in \(0.0, inf\]"),
        (2.0, {"high": 1.0}, ValueError, r"must lie in \[-inf, 1.0\]"),
    ],
)
def test_check_real(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        _validate.check_real(value, "x", **kwargs)


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_seed_validation(seed, error):
    with pytest.raises(error, match="`seed`"):
        _array.as_generator(seed)
