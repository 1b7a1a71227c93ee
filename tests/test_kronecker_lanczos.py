"""power_svd / lanczos_svd against numpy's SVD, on arrays and on Fisher operators."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from _fisher_data import dense_fisher, mlp_statistics, rearrange_loops
from _helpers import ORTH, asarray, assert_backend, assert_orthonormal, reference_flip, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import FisherBlockOperator, lanczos_svd, power_svd
from lowrank_online.kronecker.lanczos import ARRAY_BLOCK_SIZE

SV_TOL = {"float64": 1e-8, "float32": 1e-4}


def _matrix(rng, m, n, decay=0.8, rank=None):
    r = min(m, n) if rank is None else rank
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (U * decay ** np.arange(r)) @ V.T


@given(m=st.integers(25, 60), n=st.integers(25, 60), k=st.integers(1, 6),
       decay=st.sampled_from([0.5, 0.8, 0.95]), seed=st.integers(0, 2**32 - 1))
def test_lanczos_matches_numpy_top_k_singular_values(m, n, k, decay, seed):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(seed)
    A = _matrix(rng, m, n, decay)
    res = lanczos_svd(xp.asarray(A), k, krylov_dim=k + 8, tol=1e-10, seed=seed)
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(res.S, s[:k], rtol=1e-8)
    assert res.converged


@functools.lru_cache
def _backend_problem(dtype_name):
    A = _matrix(np.random.default_rng(0), 150, 100, 0.85)
    U, s, _ = np.linalg.svd(A.astype(dtype_name).astype(float), full_matrices=False)
    return A, U, s


@pytest.mark.parametrize("block_size", [1, 3, None])
def test_lanczos_triplets_on_every_backend(xp, dtype_name, block_size):
    A, U, s = _backend_problem(dtype_name)
    res = lanczos_svd(asarray(xp, A, dtype_name), 10, tol=1e-9 if dtype_name == "float64" else 1e-5,
                      block_size=block_size)
    b = ARRAY_BLOCK_SIZE if block_size is None else block_size  # an array's default block
    assert res.converged and res.iterations > 0 and res.n_products == 2 * b * res.iterations
    np.testing.assert_allclose(to_np(res.S), s[:10], rtol=SV_TOL[dtype_name])
    for out in (res.U, res.S, res.Vh, res.residuals):
        assert_backend(out, xp, dtype_name)
    assert_orthonormal(res.U, dtype_name)
    assert_orthonormal(res.Vh.T, dtype_name)
    # the library's sign convention, comparable entry by entry with a flipped dense reference
    Ur = reference_flip(U[:, :10])
    np.testing.assert_allclose(to_np(res.U), Ur, atol=1e-6 if dtype_name == "float64" else 2e-2)
    # A v_i = s_i u_i, and the reported residuals bound |A^T u_i - s_i v_i|
    Un, Vn, Sn = to_np(res.U), to_np(res.Vh).T, to_np(res.S)
    scale = {"float64": 1e-12, "float32": 1e-5}[dtype_name]
    assert np.linalg.norm(A @ Vn - Un * Sn) <= 100 * scale * s[0]
    true_res = np.linalg.norm(A.T @ Un - Vn * Sn, axis=0)
    assert np.all(true_res <= to_np(res.residuals) + 100 * scale * s[0])


@given(k=st.integers(1, 6), b=st.integers(1, 5), restarted=st.booleans(), rank=st.sampled_from([None, 2, 7]),
       n=st.sampled_from([20, 50]), seed=st.integers(0, 2**32 - 1))
def test_block_lanczos_matches_numpy_with_restarts_and_breakdowns(k, b, restarted, rank, n, seed):
    """Blocks of every size, restarted or not, on matrices whose rank may fall below k + b
    (exact breakdowns inside a block): the singular values of numpy's SVD, orthonormal
    triplets, and residuals that bound the true ones."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(seed)
    A = _matrix(rng, 70, n, 0.8, rank=rank)
    kd = k + 2 * b - 1 if restarted else 40  # at n = 20 some blocks would outgrow A: the dense SVD
    res = lanczos_svd(xp.asarray(A), k, block_size=b, krylov_dim=kd, tol=1e-10, max_restarts=1000, seed=seed)
    s = np.linalg.svd(A, compute_uv=False)[:k]
    assert res.converged
    np.testing.assert_allclose(res.S, s, rtol=1e-8, atol=1e-12)
    assert_orthonormal(res.U, "float64")
    assert_orthonormal(res.Vh.T, "float64")
    true_res = np.linalg.norm(A.T @ res.U - res.Vh.T * res.S, axis=0)
    assert np.all(true_res <= res.residuals + 1e-11)
    assert np.linalg.norm(A @ res.Vh.T - res.U * res.S) <= 1e-11


def test_blocks_that_would_outgrow_the_matrix_fall_back_or_shrink(xp):
    """The right basis holds krylov_dim + block_size vectors of length n: a default block
    shrinks to fit, an explicit one that cannot fit means the dense SVD."""
    rng = np.random.default_rng(5)
    A = _matrix(rng, 12, 10, 0.7)
    s = np.linalg.svd(A, compute_uv=False)[:3]
    shrunk = lanczos_svd(asarray(xp, A), 3, krylov_dim=8, tol=1e-12)
    dense = lanczos_svd(asarray(xp, A), 3, krylov_dim=8, block_size=3, tol=1e-12)
    assert shrunk.iterations > 0 and shrunk.n_products % (2 * shrunk.iterations) == 0
    assert dense.iterations == 0
    for res in (shrunk, dense):
        np.testing.assert_allclose(to_np(res.S), s, rtol=1e-10)


def test_block_lanczos_on_an_operator_equals_the_array_result(xp):
    a, g = mlp_statistics(n_samples=128)
    op = FisherBlockOperator(asarray(xp, a), asarray(xp, g))
    one = lanczos_svd(op, 4, krylov_dim=14, tol=1e-10)
    blocks = lanczos_svd(op, 4, krylov_dim=14, block_size=3, tol=1e-10)
    assert one.n_products == 2 * one.iterations and blocks.n_products == 6 * blocks.iterations
    np.testing.assert_allclose(to_np(blocks.S), to_np(one.S), rtol=1e-9)
    np.testing.assert_allclose(to_np(blocks.U), to_np(one.U), atol=1e-7)


def test_lanczos_restarts_and_agrees_with_a_larger_krylov_space():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(1)
    A = _matrix(rng, 120, 90, 0.95)
    small = lanczos_svd(xp.asarray(A), 5, krylov_dim=8, tol=1e-10, max_restarts=500)
    large = lanczos_svd(xp.asarray(A), 5, krylov_dim=60, tol=1e-10)
    s = np.linalg.svd(A, compute_uv=False)[:5]
    assert small.converged and large.converged
    assert small.iterations > 8  # restarted
    np.testing.assert_allclose(small.S, s, rtol=1e-10)
    np.testing.assert_allclose(large.S, s, rtol=1e-10)
    np.testing.assert_allclose(small.U, large.U, atol=1e-7)
    assert_orthonormal(small.U, "float64")
    assert_orthonormal(small.Vh.T, "float64")


def test_lanczos_on_rank_deficient_input_with_k_above_the_rank(xp):
    """An exact breakdown (invariant subspace) continues with fresh orthogonal vectors."""
    rng = np.random.default_rng(2)
    A = _matrix(rng, 80, 70, 0.7, rank=3)
    res = lanczos_svd(asarray(xp, A), 5, krylov_dim=20, tol=1e-10)
    s = np.linalg.svd(A, compute_uv=False)[:5]
    assert res.converged
    np.testing.assert_allclose(to_np(res.S), s, atol=1e-12)
    assert_orthonormal(res.U, "float64")
    assert_orthonormal(res.Vh.T, "float64")


def test_lanczos_dense_fallback_when_the_krylov_space_covers_the_matrix(xp):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((12, 9))
    res = lanczos_svd(asarray(xp, A), 4)  # default krylov_dim 20 >= min(m, n) = 9
    assert res.iterations == 0 and res.converged
    np.testing.assert_allclose(to_np(res.S), np.linalg.svd(A, compute_uv=False)[:4], rtol=1e-13)
    full = lanczos_svd(asarray(xp, A), 9)
    np.testing.assert_allclose(to_np(full.S), np.linalg.svd(A, compute_uv=False), rtol=1e-13)


def test_lanczos_and_power_on_the_fisher_operator(xp):
    a, g = mlp_statistics(n_samples=128)
    d_a, d_g = a.shape[1], g.shape[1]
    R = rearrange_loops(dense_fisher(a, g), (d_g, d_g), (d_a, d_a))
    s = np.linalg.svd(R, compute_uv=False)
    op = FisherBlockOperator(asarray(xp, a), asarray(xp, g))
    res = lanczos_svd(op, 4, krylov_dim=12, tol=1e-10)
    np.testing.assert_allclose(to_np(res.S), s[:4], rtol=1e-8)
    pw = power_svd(op, tol=1e-10)
    np.testing.assert_allclose(to_np(pw.S), s[:1], rtol=1e-12)
    assert pw.n_products == 2 * pw.iterations + 1


def test_power_svd_triplet_residual_and_warm_start(xp, dtype_name):
    rng = np.random.default_rng(4)
    A = _matrix(rng, 60, 40, 0.6)
    res = power_svd(asarray(xp, A, dtype_name), tol=1e-8 if dtype_name == "float64" else 1e-5)
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(to_np(res.S), s[:1], rtol=SV_TOL[dtype_name])
    assert res.converged
    for out in (res.U, res.S, res.Vh, res.residuals):
        assert_backend(out, xp, dtype_name)
    u, v = to_np(res.U)[:, 0], to_np(res.Vh)[0]
    assert np.linalg.norm(A @ v - float(to_np(res.S)[0]) * u) <= 10 * float(to_np(res.residuals)[0]) + ORTH[dtype_name]
    # warm start from the previous solution: converged at once
    again = power_svd(asarray(xp, A, dtype_name), v0=res.Vh[0, :], tol=1e-8 if dtype_name == "float64" else 1e-5)
    assert again.iterations <= 2 < res.iterations


def test_power_svd_is_deterministic_across_backends(xp):
    import array_api_compat.numpy as npx

    A = _matrix(np.random.default_rng(5), 30, 20, 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = power_svd(npx.asarray(A), max_iter=5, tol=0.0, seed=7)
        got = power_svd(asarray(xp, A), max_iter=5, tol=0.0, seed=7)
    np.testing.assert_allclose(to_np(got.U), ref.U, atol=1e-12)


def test_non_convergence_warns_and_reports(xp):
    A = _matrix(np.random.default_rng(6), 60, 50, 0.999)
    with pytest.warns(RuntimeWarning, match="power_svd did not converge"):
        res = power_svd(asarray(xp, A), max_iter=2, tol=1e-12)
    assert not res.converged and res.iterations == 2
    with pytest.warns(RuntimeWarning, match="lanczos_svd did not converge"):
        res = lanczos_svd(asarray(xp, A), 5, krylov_dim=7, max_restarts=1, tol=1e-14)
    assert not res.converged


def test_zero_matrix_gives_zero_singular_values(xp):
    Z = asarray(xp, np.zeros((30, 25)))
    res = power_svd(Z)
    assert float(res.S[0]) == 0.0 and res.converged
    res = lanczos_svd(Z, 2, krylov_dim=6)
    np.testing.assert_array_equal(to_np(res.S), [0.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "`k` must be an integer in"),
        ({"k": 21}, ValueError, r"`k` must be an integer in \[1, 20\]"),
        ({"k": 2.0}, TypeError, "`k` must be an integer"),
        ({"k": 3, "krylov_dim": 3}, ValueError, "`krylov_dim` must be an integer"),
        ({"k": 3, "tol": -1.0}, ValueError, "`tol` must lie in"),
        ({"k": 3, "v0": np.ones(5)}, ValueError, "`v0` must have 20 entries"),
        ({"k": 3, "v0": np.zeros(20)}, ValueError, "`v0` must be a non-zero vector"),
        ({"k": 3, "seed": -1}, ValueError, "`seed` must be non-negative"),
        ({"k": 3, "block_size": 0}, ValueError, "`block_size` must be an integer"),
        ({"k": 3, "block_size": 2.0}, TypeError, "`block_size` must be an integer"),
        ({"k": 3, "block_size": 4, "krylov_dim": 8}, ValueError, r"`krylov_dim` must be at least .* = 10"),
    ],
)
def test_lanczos_rejects_bad_input(xp, kwargs, error, match):
    A = asarray(xp, _matrix(np.random.default_rng(7), 30, 20))
    kwargs = {k: asarray(xp, v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    k = kwargs.pop("k")
    with pytest.raises(error, match=match):
        lanczos_svd(A, k, **kwargs)


def test_power_svd_rejects_bad_input(xp):
    A = asarray(xp, np.ones((4, 3)))
    with pytest.raises(ValueError, match="`max_iter` must be an integer"):
        power_svd(A, max_iter=0)
    with pytest.raises(ValueError, match="`v0` must have 3 entries"):
        power_svd(A, v0=asarray(xp, np.ones(4)))
    with pytest.raises(TypeError, match="`A` must be an array or an operator"):
        power_svd([[1.0, 2.0]])
    with pytest.raises(ValueError, match="`A` contains NaN"):
        power_svd(asarray(xp, np.full((3, 3), np.nan)))


def test_small_singular_values_keep_their_digits():
    """Bidiagonalization never forms A^T A: a singular value 1e-8 below the top one keeps
    ~6 digits, where the eigenvalues of A^T A (1e-16 relative) are lost to rounding."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(8)
    U, _ = np.linalg.qr(rng.standard_normal((60, 40)))
    V, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    s = 10.0 ** -np.arange(0, 20, 0.5)  # 1, 0.32, 0.1, ..., 1e-8 at index 16
    A = (U * s) @ V.T
    res = lanczos_svd(xp.asarray(A), 17, krylov_dim=30, tol=1e-12)
    assert res.converged
    np.testing.assert_allclose(res.S, s[:17], rtol=1e-5)
    squared = np.sqrt(np.abs(np.linalg.eigvalsh(A.T @ A)[::-1][:17]))
    assert abs(squared[16] - s[16]) / s[16] > 1e-3  # what squaring would have given
