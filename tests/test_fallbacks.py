"""Fallback chains of the kernels, and the inputs that used to give the wrong exception or
silently wrong results (issue 13, items 4 and 6, outside the curvature adapter)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import asarray, assert_orthonormal, to_np

from lowrank_online import (
    DecompositionError,
    FisherBlockOperator,
    KronSumInverse,
    LowRankEMA,
    _backend,
    _linalg,
    ekfac_update,
    kfac_corrected,
    kpsvd,
    lanczos_svd,
    reigh,
    tkfac_factors,
)
from lowrank_online.curvature import KFACPreconditioner


def _broken(kind, original):
    def fn(*args, **kwargs):
        if kind == "raise":
            raise np.linalg.LinAlgError("injected failure")
        out = original(*args, **kwargs)
        return type(out)(*[x * np.nan for x in out]) if isinstance(out, tuple) else out * np.nan

    return fn


def _kronsum_problem(rng):
    X, Y = rng.standard_normal((4, 6)), rng.standard_normal((3, 5))
    A, B = X @ X.T / 4, Y @ Y.T / 3
    C = rng.standard_normal((4, 4))
    return A, B, (C + C.T) / 8, np.diag([0.4, -0.3, 0.2])


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_kron_sum_inverse_survives_a_broken_eigh(monkeypatch, kind):
    """Both eigendecompositions fall back: the positive definite one to the SVD, the
    indefinite (whitened C or D) one to the SVD of its shift to a PSD matrix."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(0)
    A, B, C, D = _kronsum_problem(rng)
    V = rng.standard_normal((4, 3))
    ref = KronSumInverse(A, B, C, D).apply(V)
    monkeypatch.setattr(xp.linalg, "eigh", _broken(kind, xp.linalg.eigh))
    got = KronSumInverse(A, B, C, D).apply(V)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_kron_sum_inverse_raises_a_decomposition_error_when_every_path_fails(monkeypatch):
    import array_api_compat.numpy as xp

    A, B, C, D = _kronsum_problem(np.random.default_rng(1))
    monkeypatch.setattr(xp.linalg, "eigh", _broken("raise", xp.linalg.eigh))
    monkeypatch.setattr(xp.linalg, "svd", _broken("raise", xp.linalg.svd))
    with pytest.raises(DecompositionError):
        KronSumInverse(A, B, C, D)


def test_a_kronecker_sum_that_cancels_is_singular():
    """``A ⊗ B - A ⊗ B`` is zero: refused whatever the conditioning (it was accepted for a
    third of random SPD pairs, with solutions of ~1e15)."""
    rng = np.random.default_rng(2)
    for _ in range(50):
        p, q = rng.integers(2, 10, size=2)
        X, Y = rng.standard_normal((p, p + 2)), rng.standard_normal((q, q + 2))
        A, B = X @ X.T / p, Y @ Y.T / q
        with pytest.raises(ValueError, match="singular to working precision"):
            KronSumInverse(A, B, -A, B)


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_the_tall_svd_falls_back_to_qr_and_a_small_svd(monkeypatch, kind):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(3)
    F = rng.standard_normal((40, 5)) @ np.diag([1.0, 1e-3, 1e-6, 1e-9, 0.0])
    be = _backend.backend_of(F, xp)
    U0, s0, _ = _linalg.thin_svd(F, be)
    calls = {"n": 0}
    original = xp.linalg.svd

    def first_fails(*args, **kwargs):  # the tall SVD fails, the small one of R works
        calls["n"] += 1
        return _broken(kind, original)(*args, **kwargs) if calls["n"] == 1 else original(*args, **kwargs)

    monkeypatch.setattr(xp.linalg, "svd", first_fails)
    U, s, Vh = _linalg.thin_svd(F, be)
    np.testing.assert_allclose(s, s0, atol=1e-14)
    np.testing.assert_allclose(U[:, :3] * s[:3] @ Vh[:3], U0[:, :3] * s0[:3] @ Vh[:3], atol=1e-13)
    monkeypatch.setattr(xp.linalg, "qr", _broken(kind, xp.linalg.qr))
    monkeypatch.setattr(xp.linalg, "svd", _broken(kind, original))
    with pytest.raises(DecompositionError, match="SVD of a 40x5 block failed"):
        _linalg.thin_svd(F, be)


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_orthonormalize_falls_back_from_qr_to_the_svd(monkeypatch, kind):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(4)
    Y = rng.standard_normal((30, 6)) @ np.diag([1.0, 1.0, 1e-12, 1.0, 1.0, 1.0])  # CholeskyQR breaks down
    monkeypatch.setattr(xp.linalg, "qr", _broken(kind, xp.linalg.qr))
    P = _linalg.orthonormalize(Y, _backend.backend_of(Y, xp))
    assert_orthonormal(P, "float64")
    np.testing.assert_allclose(P @ (P.T @ Y), Y, atol=1e-12)


def test_orthonormalize_accepts_a_block_without_columns():
    import array_api_compat.numpy as xp

    Y = np.zeros((5, 0))
    assert _linalg.orthonormalize(Y, _backend.backend_of(Y, xp)).shape == (5, 0)


@pytest.mark.parametrize("d", [50, 5])  # the Nystrom path and the dense one
def test_reigh_of_an_all_zero_matrix_is_zero_with_an_orthonormal_basis(xp, dtype_name, d):
    res = reigh(asarray(xp, np.zeros((d, d)), dtype_name), 3, seed=0)
    np.testing.assert_array_equal(to_np(res.eigenvalues), np.zeros(3))
    assert_orthonormal(res.eigenvectors, dtype_name)


def test_zero_statistics_reach_the_trackers_and_the_preconditioner_as_data():
    rng = np.random.default_rng(5)
    tracker = LowRankEMA(3)
    tracker.update(rng.standard_normal((20, 2)))
    tracker.refresh(np.zeros((20, 20)), seed=0)  # an IndexError before
    assert np.all(tracker.eigenvalues == 0) and tracker.skipped_updates == 0
    pre = KFACPreconditioner("rkfac", rank=2, T_inv=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pre.update("fc", np.zeros((6, 5)), rng.standard_normal((6, 3)))
    assert pre.skipped_updates == {}


def test_kpsvd_of_zero_statistics_is_zero_and_names_no_internal_argument():
    rng = np.random.default_rng(6)
    a, g = np.zeros((10, 4)), rng.standard_normal((10, 3))
    for result in (kpsvd(a, g), kpsvd(a, g, terms=2), kpsvd(a, g, terms=2, method="lanczos"), kfac_corrected(a, g)):
        assert np.all(result.to_dense() == 0.0)
    zero = kpsvd(a, g)
    assert np.all(kpsvd(rng.standard_normal((10, 4)), g, init=zero).to_dense() != 0.0)  # a zero warm start


def test_tkfac_factors_of_huge_statistics_are_accurate_or_refused():
    rng = np.random.default_rng(7)
    a, g = rng.standard_normal((10, 4)), rng.standard_normal((10, 3))
    ref = tkfac_factors(a, g)
    big = tkfac_factors(a * 1e150, g)  # delta ~ 1e300: fits
    np.testing.assert_allclose(big.Phi, ref.Phi, rtol=1e-14)
    np.testing.assert_allclose(float(big.delta) / 1e300, float(ref.delta), rtol=1e-14)
    with pytest.raises(ValueError, match="overflows float64"):  # delta ~ 1e320 (was NaN)
        tkfac_factors(a * 1e160, g)
    with pytest.raises(ValueError, match="Fisher block is zero"):
        tkfac_factors(np.zeros((10, 4)), g)


def test_smaller_gaps_are_closed():
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="`krylov_dim` must be an integer"):
        lanczos_svd(rng.standard_normal((5, 4)), 4, krylov_dim=-3)  # k = min(m, n)
    a, g = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    with pytest.raises(ValueError, match="`scalings` must be non-negative"):
        ekfac_update(-np.ones((3, 4)), a, g, np.eye(3), np.eye(4))
    op = FisherBlockOperator(a, g)
    with pytest.raises(TypeError, match="`V` must have dtype float32 or float64"):
        op.matmat(np.ones((16, 2), dtype=np.int64))
    tracker = LowRankEMA(3)
    with pytest.raises(ValueError, match="`A` must have at least one row"):
        tracker.update(np.ones((0, 3)))
    assert tracker.eigenvectors is None
    tracker.update(rng.standard_normal((7, 2)))
    assert tracker.eigenvectors.shape[0] == 7
    with pytest.raises(TypeError, match="`continuation` must be True or False"):
        tracker.solve(np.ones(7), 0.1, continuation="no")
    with pytest.raises(ValueError, match="`X` must be symmetric"):
        tracker.correct(np.triu(np.ones((7, 7))), 1)


def test_brand_updates_that_overflow_raise_without_numpy_warnings():
    rng = np.random.default_rng(9)
    from lowrank_online import eigh_update, svd_update

    Q = np.linalg.qr(rng.standard_normal((20, 3)))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecompositionError, match="the updated matrix overflows"):
            eigh_update(np.ones(3), Q, rng.standard_normal((20, 2)) * 1e200)
        with pytest.raises(DecompositionError, match="the updated matrix overflows"):
            svd_update(Q, np.ones(3), Q.T, rng.standard_normal((20, 2)) * 1e200, rng.standard_normal((20, 2)) * 1e200)


