"""LowRankEMA against dense implementations of paper 001's processes (8) and (10)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import asarray, assert_backend, assert_matrix_close, assert_orthonormal, to_np

from lowrank_online import LowRankEMA, _linalg, ema, load_state, reigh, save_state


def _held(tracker):
    Q, L = to_np(tracker.eigenvectors), to_np(tracker.eigenvalues)
    return Q @ np.diag(L) @ Q.T


def _top(M, r):
    w, V = np.linalg.eigh(M)
    w, V = w[::-1][:r], V[:, ::-1][:, :r]
    return V @ np.diag(w) @ V.T


def test_update_follows_dense_process_10_over_50_steps(xp, dtype_name):
    rng = np.random.default_rng(0)
    d, r, n, rho = 40, 6, 3, 0.9
    basis = rng.standard_normal((d, 12)) * 0.8 ** np.arange(12)  # decaying spectrum
    tracker = LowRankEMA(rank=r, decay=rho)
    dense = None
    for _ in range(50):
        A = np.asarray(basis @ rng.standard_normal((12, n)) + 0.05 * rng.standard_normal((d, n)), np.dtype(dtype_name))
        tracker.update(asarray(xp, A, dtype_name))
        Af = A.astype(float)
        # process (10): M_B,0 = A_0 A_0^T; M_B,i+1 = rho * trunc_r(M_B,i) + (1 - rho) A A^T
        dense = Af @ Af.T if dense is None else rho * _top(dense, r) + (1 - rho) * Af @ Af.T
        assert tracker.eigenvectors.shape[1] <= r + n
        assert_matrix_close(_held(tracker), dense, dtype_name, factor=100)
    assert tracker.n_updates == 50
    assert_orthonormal(tracker.eigenvectors, dtype_name)
    assert_backend(tracker.eigenvalues, xp, dtype_name)


def test_without_truncation_the_tracker_is_the_exact_average(xp):
    # rank >= d: no truncation, so M_k = sum kappa(i) rho^(k-i) A_i A_i^T exactly (eq. (5)).
    rng = np.random.default_rng(1)
    d, n, rho = 8, 2, 0.7
    tracker = LowRankEMA(rank=d, decay=rho)
    batches = [rng.standard_normal((d, n)) for _ in range(12)]
    for A in batches:
        tracker.update(asarray(xp, A))
    k = len(batches) - 1
    exact = sum((1.0 if i == 0 else 1 - rho) * rho ** (k - i) * A @ A.T for i, A in enumerate(batches))
    assert_matrix_close(_held(tracker), exact, "float64")


def test_first_update_is_not_scaled(xp):
    A = np.array([[3.0], [0.0], [4.0]])
    tracker = LowRankEMA(rank=2, decay=0.95)
    tracker.update(asarray(xp, A))
    np.testing.assert_allclose(to_np(tracker.eigenvalues), [25.0])  # kappa(0) = 1


def test_refresh_overwrites_with_reigh_and_updates_continue(xp):
    rng = np.random.default_rng(2)
    d, r = 60, 5
    B = rng.standard_normal((d, 8)) * 0.6 ** np.arange(8)
    M = B @ B.T
    tracker = LowRankEMA(rank=r)
    tracker.update(asarray(xp, rng.standard_normal((d, 2))))
    tracker.refresh(asarray(xp, M), seed=3)
    ref = reigh(asarray(xp, M), r, seed=3)
    np.testing.assert_array_equal(to_np(tracker.eigenvalues), to_np(ref.eigenvalues))
    np.testing.assert_array_equal(to_np(tracker.eigenvectors), to_np(ref.eigenvectors))
    assert tracker.n_updates == 1
    A = rng.standard_normal((d, 2))
    tracker.update(asarray(xp, A))
    expected = 0.95 * _top(M, r) + 0.05 * A @ A.T
    assert_matrix_close(_held(tracker), expected, "float64", factor=1e3)  # rsvd projection error


def test_correct_matches_dense_algorithm_6_and_never_increases_error(xp):
    rng = np.random.default_rng(4)
    d, r, n = 30, 6, 4
    B = rng.standard_normal((d, 10)) * 0.7 ** np.arange(10)
    tracker = LowRankEMA(rank=r, decay=0.8)
    true = None
    for _ in range(15):
        A = B @ rng.standard_normal((10, n))
        tracker.update(asarray(xp, A))
        true = A @ A.T if true is None else 0.8 * true + 0.2 * A @ A.T
    Q, L = to_np(tracker.eigenvectors), to_np(tracker.eigenvalues)
    before = np.linalg.norm(true - _held(tracker))
    tracker.correct(asarray(xp, true), n_modes=3, seed=7)
    after = np.linalg.norm(true - _held(tracker))
    assert after <= before * (1 + 1e-12)
    # dense Alg. 6 with the same draw
    idx = sorted(np.random.default_rng(7).choice(min(r, Q.shape[1]), size=3, replace=False))
    Qc = Q[:, idx]
    w, U = np.linalg.eigh(Qc.T @ true @ Qc)
    Q2, L2 = Q.copy(), L.copy()
    Q2[:, idx], L2[idx] = Qc @ U, w
    assert_matrix_close(_held(tracker), Q2 @ np.diag(L2) @ Q2.T, "float64")
    assert np.all(np.diff(to_np(tracker.eigenvalues)) <= 0)
    assert_orthonormal(tracker.eigenvectors, "float64")


def test_solve_matches_dense(xp):
    rng = np.random.default_rng(5)
    tracker = LowRankEMA(rank=4)
    A = rng.standard_normal((12, 3))
    tracker.update(asarray(xp, A))
    X = rng.standard_normal((12, 2))
    got = tracker.solve(asarray(xp, X), damping=0.3)
    np.testing.assert_allclose(to_np(got), np.linalg.solve(A @ A.T + 0.3 * np.eye(12), X), rtol=1e-10)


def test_state_dict_round_trip_is_bit_exact_and_resumes_identically(tmp_path, xp):
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((20, 3)) for _ in range(8)]
    tracker = LowRankEMA(rank=4, decay=0.9, reorthonormalize_every=3)
    for A in batches[:5]:
        tracker.update(asarray(xp, A))
    save_state(tmp_path / "ema.npz", tracker.state_dict())
    restored = LowRankEMA.from_state_dict(load_state(tmp_path / "ema.npz"), xp=xp)
    assert restored.n_updates == 5 and restored.rank == 4 and restored.decay == 0.9
    np.testing.assert_array_equal(to_np(restored.eigenvectors), to_np(tracker.eigenvectors))
    for A in batches[5:]:
        tracker.update(asarray(xp, A))
        restored.update(asarray(xp, A))
    np.testing.assert_array_equal(to_np(restored.eigenvectors), to_np(tracker.eigenvectors))
    np.testing.assert_array_equal(to_np(restored.eigenvalues), to_np(tracker.eigenvalues))


def test_empty_tracker_round_trips():
    restored = LowRankEMA.from_state_dict(LowRankEMA(3, 0.5).state_dict())
    assert restored.eigenvectors is None and restored.rank == 3 and restored.decay == 0.5


def test_state_moves_between_namespaces():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    tracker = LowRankEMA(rank=2)
    tracker.update(np.random.default_rng(7).standard_normal((6, 2)))
    moved = LowRankEMA.from_state_dict(tracker.state_dict(), xp=txp)
    assert isinstance(moved.eigenvectors, torch.Tensor)
    np.testing.assert_array_equal(moved.eigenvectors.numpy(), tracker.eigenvectors)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.ones((7, 2)), ValueError, "`A` has 7 rows but the tracker has dimension 6"),
        (np.full((6, 2), np.nan), ValueError, "`A` contains NaN"),
        (np.ones((6, 2), dtype=np.float32), TypeError, "cast it first"),
        (np.ones((6, 2, 1)), ValueError, "`A` must be 1-D or 2-D"),
    ],
)
def test_rejected_update_keeps_the_state(xp, bad, error, match):
    rng = np.random.default_rng(8)
    tracker = LowRankEMA(rank=3)
    tracker.update(asarray(xp, rng.standard_normal((6, 2))))
    before = (to_np(tracker.eigenvalues).copy(), to_np(tracker.eigenvectors).copy(), tracker.n_updates)
    with pytest.raises(error, match=match):
        tracker.update(xp.asarray(bad))
    np.testing.assert_array_equal(to_np(tracker.eigenvalues), before[0])
    np.testing.assert_array_equal(to_np(tracker.eigenvectors), before[1])
    assert tracker.n_updates == before[2]


def test_update_from_another_namespace_is_rejected():
    torch = pytest.importorskip("torch")
    tracker = LowRankEMA(rank=2)
    tracker.update(np.ones((4, 1)))
    with pytest.raises(TypeError, match="`A` is a torch array"):
        tracker.update(torch.ones(4, 1, dtype=torch.float64))
    assert tracker.n_updates == 1


def test_failed_decomposition_warns_and_keeps_the_state(monkeypatch):
    tracker = LowRankEMA(rank=2)
    tracker.update(np.eye(4)[:, :2])
    before = tracker.eigenvectors.copy()

    def broken(*args, **kwargs):
        raise _linalg.DecompositionError("core eigh did not converge")

    monkeypatch.setattr(ema, "_eigh_update", broken)
    with pytest.warns(RuntimeWarning, match="update skipped at update 2: core eigh did not converge"):
        tracker.update(np.ones((4, 1)))
    np.testing.assert_array_equal(tracker.eigenvectors, before)
    assert tracker.n_updates == 1


def test_restore_orthonormality_keeps_the_matrix():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(9)
    Q, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    Q = Q + 1e-9 * rng.standard_normal(Q.shape)  # drifted basis
    L = np.linspace(5.0, 1.0, 6)
    res = ema._restore_orthonormality(xp.asarray(L), xp.asarray(Q), xp)
    assert np.abs(res.eigenvectors.T @ res.eigenvectors - np.eye(6)).max() < 1e-14
    assert_matrix_close(
        res.eigenvectors @ np.diag(res.eigenvalues) @ res.eigenvectors.T, Q @ np.diag(L) @ Q.T, "float64"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "`rank`"),
        ({"rank": 2, "decay": 0.0}, ValueError, "`decay` must lie in"),
        ({"rank": 2, "decay": 1.01}, ValueError, "`decay` must lie in"),
        ({"rank": 2, "reorthonormalize_every": 0}, ValueError, "`reorthonormalize_every`"),
    ],
)
def test_constructor_validates(kwargs, error, match):
    with pytest.raises(error, match=match):
        LowRankEMA(**kwargs)


def test_operations_before_first_update_are_refused():
    tracker = LowRankEMA(rank=2)
    with pytest.raises(ValueError, match="call update"):
        tracker.solve(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="call update"):
        tracker.correct(np.eye(3), 1)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype_name", "bound"), [("float64", 1e-10), ("float32", 1e-4)])
@pytest.mark.parametrize("data", ["iid", "in_span"])
def test_orthonormality_after_10000_updates(dtype_name, bound, data):
    """The issue's bar: d=500, rank=20, n=8, 10,000 consecutive updates."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(10)
    d, r, n = 500, 20, 8
    B = np.linalg.qr(rng.standard_normal((d, 30)))[0] * np.logspace(0, -3, 30)
    tracker = LowRankEMA(rank=r, decay=0.95)
    for _ in range(10_000):
        if data == "iid":
            A = rng.standard_normal((d, n))
        else:  # batches lying mostly in the held span, as K-factor data does
            A = B @ rng.standard_normal((30, n)) + 1e-6 * rng.standard_normal((d, n))
        tracker.update(xp.asarray(A.astype(dtype_name)))
    Q = tracker.eigenvectors.astype(np.float64)
    assert np.abs(Q.T @ Q - np.eye(Q.shape[1])).max() < bound


@pytest.mark.parametrize(("d", "r", "widths"), [(12, 5, [40, 40, 40, 40, 40, 40]), (16, 6, [3, 50, 8, 30, 12, 64])])
def test_update_with_batches_wider_than_d_follows_dense_process_10(xp, dtype_name, d, r, widths):
    """Batches with more columns than the dimension (convolution statistics: batch x positions),
    alone and alternating with narrow ones, so that updates switch between Brand's form and the
    dense one; the held matrix follows the dense process (10) throughout."""
    rng = np.random.default_rng(11)
    rho = 0.9
    basis = rng.standard_normal((d, d)) * 0.7 ** np.arange(d)  # decaying spectrum
    tracker = LowRankEMA(rank=r, decay=rho)
    dense, held = None, 0
    for n in widths:
        A = np.asarray(basis @ rng.standard_normal((d, n)) / np.sqrt(n), np.dtype(dtype_name))
        tracker.update(asarray(xp, A, dtype_name))
        Af = A.astype(float)
        dense = Af @ Af.T if dense is None else rho * _top(dense, r) + (1 - rho) * Af @ Af.T
        held = min(d, min(r, held) + n)  # truncate to r, then r + n columns, at most d
        assert tracker.eigenvectors.shape == (d, held)
        assert_matrix_close(_held(tracker), dense, dtype_name, factor=100)
        assert np.all(np.diff(to_np(tracker.eigenvalues)) <= 0)
        assert_orthonormal(tracker.eigenvectors, dtype_name)
    assert tracker.n_updates == len(widths)
    assert_backend(tracker.eigenvalues, xp, dtype_name)
    assert_backend(tracker.eigenvectors, xp, dtype_name)


def test_wide_batches_without_truncation_give_the_exact_average(xp):
    # rank >= d and n > d: M_k = sum kappa(i) rho^(k-i) A_i A_i^T exactly (eq. (5)).
    rng = np.random.default_rng(12)
    d, n, rho = 8, 30, 0.7
    tracker = LowRankEMA(rank=d, decay=rho)
    batches = [rng.standard_normal((d, n)) for _ in range(6)]
    for A in batches:
        tracker.update(asarray(xp, A))
    k = len(batches) - 1
    exact = sum((1.0 if i == 0 else 1 - rho) * rho ** (k - i) * A @ A.T for i, A in enumerate(batches))
    assert_matrix_close(_held(tracker), exact, "float64")


def test_wide_batch_with_nan_is_rejected_and_keeps_the_state():
    rng = np.random.default_rng(13)
    tracker = LowRankEMA(rank=3)
    tracker.update(rng.standard_normal((6, 20)))
    before = tracker.eigenvectors.copy()
    bad = rng.standard_normal((6, 20))
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="`A` contains NaN"):
        tracker.update(bad)
    np.testing.assert_array_equal(tracker.eigenvectors, before)
    assert tracker.n_updates == 1
