"""kpsvd / kfac_corrected / kfac_factors: errors against the dense optimum from the SVD of R(F)."""

from __future__ import annotations

import numpy as np
import pytest
from _fisher_data import dense_fisher, kfac_dense, mlp_statistics, optimal_errors, random_statistics
from _helpers import asarray, assert_backend, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import KronSum, kfac_corrected, kfac_factors, kpsvd

ERR_TOL = {"float64": 1e-8, "float32": 1e-4}
ITER_TOL = {"float64": 1e-10, "float32": 1e-5}


def _data(kind):
    if kind == "mlp":
        return mlp_statistics()
    if kind == "mlp-first-layer":
        return mlp_statistics(layer=0, n_samples=48)
    return random_statistics(60, 6, 5, seed=3)


def _error(F, ks):
    return np.linalg.norm(F - sum(np.kron(to_np(L), to_np(R)) for L, R in zip(ks.left, ks.right, strict=True)))


@pytest.mark.parametrize("kind", ["mlp", "mlp-first-layer", "random"])
def test_one_term_equals_the_dense_optimum_and_beats_kfac(xp, dtype_name, kind):
    a, g = _data(kind)
    a, g = a.astype(dtype_name), g.astype(dtype_name)
    F = dense_fisher(a, g)
    _, optimum = optimal_errors(F, g.shape[1], a.shape[1])
    ks = kpsvd(asarray(xp, a, dtype_name), asarray(xp, g, dtype_name), tol=ITER_TOL[dtype_name])
    err = _error(F, ks)
    assert abs(err - optimum[0]) <= ERR_TOL[dtype_name] * optimum[0]
    assert err <= np.linalg.norm(F - kfac_dense(a, g)) * (1 + ERR_TOL[dtype_name])
    assert ks.n_terms == 1
    for M in (ks.left[0], ks.right[0]):
        assert_backend(M, xp, dtype_name)
        Mn = to_np(M)
        np.testing.assert_array_equal(Mn, Mn.T)  # symmetric exactly
        w = np.linalg.eigvalsh(Mn)
        assert w.min() >= -ERR_TOL[dtype_name] * w.max()  # PSD first term (Prop. 3.2)


@pytest.mark.parametrize("kind", ["mlp", "random"])
@pytest.mark.parametrize("method", ["deflation", "lanczos"])
def test_two_terms_are_never_worse_than_one(xp, kind, method):
    a, g = _data(kind)
    F = dense_fisher(a, g)
    _, optimum = optimal_errors(F, g.shape[1], a.shape[1])
    A, G = asarray(xp, a), asarray(xp, g)
    one = _error(F, kpsvd(A, G, tol=1e-9))
    two = kpsvd(A, G, terms=2, method=method, tol=1e-9)
    err = _error(F, two)
    assert err <= one * (1 + 1e-12)
    # Lanczos is the optimal rank-2 approximation of R(F); deflation equals it for exact triplets
    assert abs(err - optimum[1]) <= 1e-8 * optimum[1]
    for M in two.left + two.right:
        Mn = to_np(M)
        np.testing.assert_array_equal(Mn, Mn.T)


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_three_lanczos_terms_match_the_dense_nearest_kronecker_sum(kind):
    import array_api_compat.numpy as xp

    a, g = _data(kind)
    F = dense_fisher(a, g)
    _, optimum = optimal_errors(F, g.shape[1], a.shape[1])
    for method in ("lanczos", "deflation"):
        ks = kpsvd(xp.asarray(a), xp.asarray(g), terms=3, method=method, tol=1e-11)
        assert abs(_error(F, ks) - optimum[2]) <= 1e-8 * optimum[2]
        norms = [np.linalg.norm(L) * np.linalg.norm(R) for L, R in zip(ks.left, ks.right, strict=True)]
        assert norms == sorted(norms, reverse=True)


@given(n=st.integers(2, 30), d_a=st.integers(2, 5), d_g=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
def test_kpsvd_optimality_for_random_shapes(n, d_a, d_g, seed):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d_a))
    g = rng.standard_normal((n, d_g)) * (1.0 + a[:, :1] ** 2)
    F = dense_fisher(a, g)
    s, optimum = optimal_errors(F, d_g, d_a)
    ks = kpsvd(xp.asarray(a), xp.asarray(g), tol=1e-12, max_iter=20000)
    # the tolerance follows the gap: the error is second order in the angle of the vector
    assert _error(F, ks) <= optimum[0] + 1e-8 * np.linalg.norm(F)
    assert _error(F, ks) <= np.linalg.norm(F - kfac_dense(a, g)) + 1e-10 * np.linalg.norm(F)


def test_exact_kronecker_block_is_recovered():
    """Constant activations: F = E[g g^T] ⊗ a0 a0^T exactly, so K-FAC and KPSVD are exact."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(4)
    g = rng.standard_normal((20, 3))
    a = np.tile(rng.standard_normal((1, 4)), (20, 1))
    F = dense_fisher(a, g)
    assert _error(F, kpsvd(xp.asarray(a), xp.asarray(g), tol=1e-12)) <= 1e-12 * np.linalg.norm(F)
    assert _error(F, kfac_factors(xp.asarray(a), xp.asarray(g))) <= 1e-13 * np.linalg.norm(F)


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_kfac_corrected_is_never_worse_than_kfac(xp, dtype_name, kind):
    a, g = _data(kind)
    a, g = a.astype(dtype_name), g.astype(dtype_name)
    F = dense_fisher(a, g)
    kc = kfac_corrected(asarray(xp, a, dtype_name), asarray(xp, g, dtype_name), tol=ITER_TOL[dtype_name])
    kfac = np.linalg.norm(F - kfac_dense(a, g))
    err = _error(F, kc)
    assert err <= kfac * (1 + ERR_TOL[dtype_name])
    # the correction is the optimum of eq. (6): the leading singular value of R(F - K-FAC)
    _, corr_opt = optimal_errors(F - kfac_dense(a, g), g.shape[1], a.shape[1])
    assert abs(err - corr_opt[0]) <= ERR_TOL[dtype_name] * corr_opt[0]
    np.testing.assert_allclose(to_np(kc.left[0]), g.T @ g / len(g), rtol=ERR_TOL[dtype_name])
    assert_backend(kc.right[1], xp, dtype_name)


def test_warm_start_reproduces_the_result(xp):
    a, g = _data("mlp")
    A, G = asarray(xp, a), asarray(xp, g)
    first = kpsvd(A, G, terms=2, method="deflation", tol=1e-8)
    again = kpsvd(A, G, terms=2, method="deflation", tol=1e-8, init=first)
    lz = kpsvd(A, G, terms=2, method="lanczos", tol=1e-8, init=first)
    for ks in (again, lz):
        for M, N in zip(first.left + first.right, ks.left + ks.right, strict=True):
            np.testing.assert_allclose(to_np(M), to_np(N), atol=1e-6 * float(np.abs(to_np(M)).max()))
    kc = kfac_corrected(A, G, tol=1e-8)
    kc2 = kfac_corrected(A, G, tol=1e-8, init=kc)
    np.testing.assert_allclose(to_np(kc2.left[1]), to_np(kc.left[1]), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"terms": 0}, ValueError, "`terms` must be an integer"),
        ({"terms": 7}, ValueError, r"`terms` = 7 exceeds the rank bound of R\(F\).* = 6"),
        ({"terms": 2, "method": "power"}, ValueError, "method='power' computes one term"),
        ({"method": "svd"}, ValueError, "`method` must be one of"),
        ({"tol": -1.0}, ValueError, "`tol` must lie in"),
        ({"max_iter": 0}, ValueError, "`max_iter` must be an integer"),
        ({"init": (1, 2)}, TypeError, "`init` must be a KronSum"),
    ],
)
def test_kpsvd_rejects_bad_parameters(xp, kwargs, error, match):
    rng = np.random.default_rng(5)
    a, g = asarray(xp, rng.standard_normal((10, 3))), asarray(xp, rng.standard_normal((10, 4)))
    with pytest.raises(error, match=match):
        kpsvd(a, g, **kwargs)


def test_kpsvd_rejects_bad_statistics(xp):
    rng = np.random.default_rng(6)
    a, g = rng.standard_normal((10, 3)), rng.standard_normal((12, 2))
    with pytest.raises(ValueError, match="`a` has 10 rows but `g` has 12"):
        kpsvd(asarray(xp, a), asarray(xp, g))
    with pytest.raises(ValueError, match="`a` has 10 rows but `g` has 12"):
        kfac_corrected(asarray(xp, a), asarray(xp, g))
    with pytest.raises(ValueError, match="`a` has 10 rows but `g` has 12"):
        kfac_factors(asarray(xp, a), asarray(xp, g))
    bad = rng.standard_normal((12, 3))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="`a` contains NaN"):
        kpsvd(asarray(xp, bad), asarray(xp, g))
    with pytest.raises(TypeError, match="two-term KronSum"):
        kfac_corrected(asarray(xp, bad[1:]), asarray(xp, g[1:]),
                       init=KronSum((asarray(xp, np.eye(2)),), (asarray(xp, np.eye(3)),)))
