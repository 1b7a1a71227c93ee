"""FisherBlockOperator: products with R(F) against the dense Fisher built from np.kron(g_t, a_t)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from _fisher_data import TinyMLP, dense_fisher, mlp_statistics, random_statistics, rearrange_loops
from _helpers import asarray, assert_backend, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import FisherBlockOperator, KronSum, lanczos_svd, power_svd, rsvd

PRODUCT_TOL = {"float64": 1e-12, "float32": 1e-5}


def _data(kind):
    if kind == "mlp":
        return mlp_statistics()
    return random_statistics(50, 7, 4, seed=1)


def _rel(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def test_tiny_mlp_backward_pass_matches_finite_differences():
    """The per-sample weight gradient g a^T of the helper is the true gradient of -log p(y|x)."""
    mlp = TinyMLP()
    stats = mlp.statistics(n_samples=3, seed=5)
    x, y = mlp.last_inputs[1], int(mlp.last_targets[1])
    h = 1e-6
    for layer, (a, g) in enumerate(stats):
        grad = np.outer(g[1], a[1])
        W = mlp.weights[layer]
        for i, j in [(0, 0), (W.shape[0] - 1, W.shape[1] - 1), (1, 2)]:
            plus = [w.copy() for w in mlp.weights]
            minus = [w.copy() for w in mlp.weights]
            plus[layer][i, j] += h
            minus[layer][i, j] -= h
            fd = (mlp.loss(x, y, plus) - mlp.loss(x, y, minus)) / (2 * h)
            assert abs(fd - grad[i, j]) <= 1e-7 * max(1.0, abs(fd))


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_products_equal_the_dense_rearranged_fisher(xp, dtype_name, kind):
    a, g = _data(kind)
    d_a, d_g = a.shape[1], g.shape[1]
    F = dense_fisher(a.astype(dtype_name), g.astype(dtype_name))
    R = rearrange_loops(F, (d_g, d_g), (d_a, d_a))
    op = FisherBlockOperator(asarray(xp, a, dtype_name), asarray(xp, g, dtype_name))
    assert op.shape == (d_g**2, d_a**2) and op.n_samples == a.shape[0]
    rng = np.random.default_rng(0)
    V, U = rng.standard_normal((d_a**2, 3)), rng.standard_normal((d_g**2, 2))
    out = op.matmat(asarray(xp, V, dtype_name))
    assert_backend(out, xp, dtype_name)
    assert _rel(to_np(out), R @ V) <= PRODUCT_TOL[dtype_name]
    assert _rel(to_np(op.rmatmat(asarray(xp, U, dtype_name))), R.T @ U) <= PRODUCT_TOL[dtype_name]
    assert _rel(to_np(op.matvec(asarray(xp, V[:, 0], dtype_name))), R @ V[:, 0]) <= PRODUCT_TOL[dtype_name]
    assert _rel(to_np(op.to_dense()), F) <= PRODUCT_TOL[dtype_name]
    assert _rel(to_np(op.rearranged()), R) <= PRODUCT_TOL[dtype_name]


@given(n=st.integers(1, 12), d_a=st.integers(1, 5), d_g=st.integers(1, 5), k=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_products_for_any_shape(n, d_a, d_g, k, seed):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(seed)
    a, g = rng.standard_normal((n, d_a)), rng.standard_normal((n, d_g))
    R = rearrange_loops(dense_fisher(a, g), (d_g, d_g), (d_a, d_a))
    op = FisherBlockOperator(xp.asarray(a), xp.asarray(g))
    V, U = rng.standard_normal((d_a**2, k)), rng.standard_normal((d_g**2, k))
    assert np.linalg.norm(op.matmat(V) - R @ V) <= 1e-12 * np.linalg.norm(R) * np.linalg.norm(V)
    assert np.linalg.norm(op.rmatmat(U) - R.T @ U) <= 1e-12 * np.linalg.norm(R) * np.linalg.norm(U)


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_subtracted_terms_and_matrix_free_norms(xp, kind):
    a, g = _data(kind)
    d_a, d_g = a.shape[1], g.shape[1]
    F = dense_fisher(a, g)
    rng = np.random.default_rng(1)
    Ls = [rng.standard_normal((d_g, d_g)) for _ in range(2)]
    Rs = [rng.standard_normal((d_a, d_a)) for _ in range(2)]
    op = FisherBlockOperator(asarray(xp, a), asarray(xp, g))
    assert op.frobenius_norm() == pytest.approx(np.linalg.norm(F), rel=1e-12)
    assert op.trace() == pytest.approx(np.trace(F), rel=1e-12)
    one = op.minus(KronSum((asarray(xp, Ls[0]),), (asarray(xp, Rs[0]),)))
    two = one.minus(KronSum((asarray(xp, Ls[1]),), (asarray(xp, Rs[1]),)))
    G = F - np.kron(Ls[0], Rs[0]) - np.kron(Ls[1], Rs[1])
    R = rearrange_loops(G, (d_g, d_g), (d_a, d_a))
    V, U = rng.standard_normal((d_a**2, 2)), rng.standard_normal((d_g**2, 2))
    assert _rel(to_np(two.matmat(asarray(xp, V))), R @ V) <= 1e-12
    assert _rel(to_np(two.rmatmat(asarray(xp, U))), R.T @ U) <= 1e-12
    assert _rel(to_np(two.to_dense()), G) <= 1e-12
    assert two.frobenius_norm() == pytest.approx(np.linalg.norm(G), rel=1e-10)
    assert two.trace() == pytest.approx(np.trace(G), rel=1e-10)
    assert op.subtracted is None and one.subtracted.n_terms == 1 and two.subtracted.n_terms == 2
    kfac = op.kfac()
    np.testing.assert_allclose(to_np(kfac.left[0]), g.T @ g / len(g), rtol=1e-13)
    np.testing.assert_allclose(to_np(kfac.right[0]), a.T @ a / len(a), rtol=1e-13)


def test_operator_satisfies_the_protocol_of_the_core(xp):
    """rsvd (and the Krylov solvers) accept the operator and agree with the dense R(F)."""
    a, g = mlp_statistics()
    op = FisherBlockOperator(asarray(xp, a), asarray(xp, g))
    R = rearrange_loops(dense_fisher(a, g), (g.shape[1],) * 2, (a.shape[1],) * 2)
    s = np.linalg.svd(R, compute_uv=False)
    np.testing.assert_allclose(to_np(rsvd(op, 3, seed=0).S), s[:3], rtol=1e-8)
    np.testing.assert_allclose(to_np(lanczos_svd(op, 3, krylov_dim=12, tol=1e-10).S), s[:3], rtol=1e-10)
    np.testing.assert_allclose(to_np(power_svd(op, tol=1e-10).S), s[:1], rtol=1e-12)


def test_products_never_form_the_block():
    """d_a = d_g = 64, N = 256: F and R(F) would take 128 MiB each; a product takes < 2 MiB."""
    a, g = random_statistics(256, 64, 64, seed=2)
    op = FisherBlockOperator(a, g)
    v = np.random.default_rng(0).standard_normal(64 * 64)
    op.matmat(v)  # warm-up (BLAS buffers)
    tracemalloc.start()
    try:
        op.matmat(v)
        op.rmatmat(v)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    ("a_shape", "g_shape", "error", "match"),
    [
        ((10, 3), (12, 2), ValueError, "`a` has 10 rows but `g` has 12"),
        ((10,), (10, 2), ValueError, "`a` must be 2-D"),
        ((10, 3), (10, 0), ValueError, "at least one column"),
        ((0, 3), (0, 2), ValueError, "no samples"),
    ],
)
def test_operator_rejects_bad_statistics(xp, a_shape, g_shape, error, match):
    with pytest.raises(error, match=match):
        FisherBlockOperator(asarray(xp, np.ones(a_shape)), asarray(xp, np.ones(g_shape)))


def test_operator_rejects_non_finite_mixed_and_bad_operands(xp):
    a, g = np.ones((5, 3)), np.ones((5, 2))
    bad = a.copy()
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="`a` contains NaN or infinity"):
        FisherBlockOperator(asarray(xp, bad), asarray(xp, g))
    with pytest.raises(TypeError, match="`a` must have dtype float32 or float64"):
        FisherBlockOperator(xp.asarray(np.ones((5, 3), dtype=np.int64)), asarray(xp, g))
    op = FisherBlockOperator(asarray(xp, a), asarray(xp, g))
    with pytest.raises(ValueError, match=r"`V` must have shape \(9, k\)"):
        op.matmat(asarray(xp, np.ones((4, 1))))
    with pytest.raises(ValueError, match="`subtract.left\\[0\\]` must be 2 x 2"):
        op.minus(KronSum((asarray(xp, np.eye(3)),), (asarray(xp, np.eye(3)),)))
    with pytest.raises(TypeError, match="must be a KronSum"):
        op.minus((np.eye(2), np.eye(3)))
    if xp.__name__ != "array_api_compat.numpy":
        with pytest.raises(TypeError, match="`g` is a"):
            FisherBlockOperator(asarray(xp, a), g)
