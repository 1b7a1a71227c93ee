"""EKFAC: s* against the diagonal of the dense Fisher in the eigenbasis, optimality, solve."""

from __future__ import annotations

import numpy as np
import pytest
from _fisher_data import dense_fisher, kfac_dense, mlp_statistics, random_statistics
from _helpers import asarray, assert_backend, assert_orthonormal, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import ekfac_factors, ekfac_scalings, ekfac_solve, ekfac_update

TOL = {"float64": 1e-12, "float32": 2e-5}


def _data(kind):
    return mlp_statistics() if kind == "mlp" else random_statistics(60, 6, 5, seed=3)


def _dense_ekfac(QG, QA, S):
    Q = np.kron(QG, QA)
    return Q @ np.diag(S.reshape(-1)) @ Q.T


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_scalings_are_the_fisher_diagonal_in_the_eigenbasis(xp, dtype_name, kind):
    a, g = _data(kind)
    a, g = a.astype(dtype_name), g.astype(dtype_name)
    f = ekfac_factors(asarray(xp, a, dtype_name), asarray(xp, g, dtype_name))
    for M in f:
        assert_backend(M, xp, dtype_name)
    assert_orthonormal(f.basis_g, dtype_name)
    assert_orthonormal(f.basis_a, dtype_name)
    QG, QA, S = to_np(f.basis_g), to_np(f.basis_a), to_np(f.scalings)
    F = dense_fisher(a, g)
    Q = np.kron(QG, QA)
    ref = np.diag(Q.T @ F @ Q).reshape(g.shape[1], a.shape[1])
    np.testing.assert_allclose(S, ref, atol=TOL[dtype_name] * np.abs(ref).max() * 10)
    # eigenbases of the K-FAC factors, eigenvalues descending
    Gk = g.T @ g / len(g)
    wg = np.diag(QG.T @ Gk @ QG)
    assert np.all(np.diff(wg) <= TOL[dtype_name] * wg.max() * 10)
    atol = TOL[dtype_name] * np.abs(F).max() * 10
    np.testing.assert_allclose(to_np(f.to_dense()), _dense_ekfac(QG, QA, S), atol=atol)


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_ekfac_is_never_worse_than_kfac_and_optimal_in_its_basis(xp, kind):
    a, g = _data(kind)
    F = dense_fisher(a, g)
    f = ekfac_factors(asarray(xp, a), asarray(xp, g))
    QG, QA, S = to_np(f.basis_g), to_np(f.basis_a), to_np(f.scalings)
    err = np.linalg.norm(F - _dense_ekfac(QG, QA, S))
    assert err <= np.linalg.norm(F - kfac_dense(a, g)) * (1 + 1e-12)
    rng = np.random.default_rng(0)
    for _ in range(5):  # any other diagonal in the same basis is worse (paper 004, Lemma 1)
        other = S * (1 + 0.1 * rng.standard_normal(S.shape))
        assert np.linalg.norm(F - _dense_ekfac(QG, QA, other)) >= err


@given(n=st.integers(1, 20), d_a=st.integers(1, 5), d_g=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_scalings_in_any_orthonormal_basis(n, d_a, d_g, seed):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(seed)
    a, g = rng.standard_normal((n, d_a)), rng.standard_normal((n, d_g))
    QG = np.linalg.qr(rng.standard_normal((d_g, d_g)))[0]
    QA = np.linalg.qr(rng.standard_normal((d_a, d_a)))[0]
    S = ekfac_scalings(xp.asarray(a), xp.asarray(g), xp.asarray(QG), xp.asarray(QA))
    grads = np.stack([QG.T @ np.outer(g[t], a[t]) @ QA for t in range(n)])  # per-sample, small n
    np.testing.assert_allclose(S, np.mean(grads**2, axis=0), atol=1e-13 * max(1.0, np.abs(S).max()))


def test_running_average_update(xp):
    a, g = _data("mlp")
    f = ekfac_factors(asarray(xp, a), asarray(xp, g))
    a2, g2 = random_statistics(30, a.shape[1], g.shape[1], seed=9)
    A2, G2 = asarray(xp, a2), asarray(xp, g2)
    new = ekfac_update(f.scalings, A2, G2, f.basis_g, f.basis_a, decay=0.9)
    batch = to_np(ekfac_scalings(A2, G2, f.basis_g, f.basis_a))
    np.testing.assert_allclose(to_np(new), 0.9 * to_np(f.scalings) + 0.1 * batch, rtol=1e-14)
    first = ekfac_update(None, A2, G2, f.basis_g, f.basis_a)
    np.testing.assert_allclose(to_np(first), batch, rtol=1e-14)
    # EKFAC-ra statistic: squared mini-batch mean gradient in the eigenbasis
    ra = ekfac_update(None, A2, G2, f.basis_g, f.basis_a, per_sample=False)
    QG, QA = to_np(f.basis_g), to_np(f.basis_a)
    mean = QG.T @ (g2.T @ a2 / len(a2)) @ QA
    np.testing.assert_allclose(to_np(ra), mean**2, rtol=1e-12)


def test_solve_is_the_damped_inverse(xp, dtype_name):
    a, g = _data("mlp")
    f = ekfac_factors(asarray(xp, a, dtype_name), asarray(xp, g, dtype_name))
    QG, QA, S = (to_np(M) for M in f)
    lam = 1e-3
    M = _dense_ekfac(QG, QA, S) + lam * np.eye(S.size)
    rng = np.random.default_rng(1)
    V = rng.standard_normal((3, g.shape[1], a.shape[1]))
    X = f.solve(asarray(xp, V, dtype_name), damping=lam)
    assert_backend(X, xp, dtype_name)
    ref = np.linalg.solve(M, V.reshape(3, -1).T).T.reshape(V.shape)
    tol = {"float64": 1e-10, "float32": 1e-3}[dtype_name]
    assert np.linalg.norm(to_np(X) - ref) <= tol * np.linalg.norm(ref)
    x = ekfac_solve(asarray(xp, V[0].reshape(-1), dtype_name), f.scalings, f.basis_g, f.basis_a, damping=lam)
    assert tuple(x.shape) == (V[0].size,)
    assert np.linalg.norm(to_np(x) - ref[0].reshape(-1)) <= tol * np.linalg.norm(ref[0])


def test_ekfac_rejects_bad_input(xp):
    a, g = asarray(xp, np.ones((4, 3))), asarray(xp, np.ones((4, 2)))
    I2, I3 = asarray(xp, np.eye(2)), asarray(xp, np.eye(3))
    with pytest.raises(ValueError, match="`basis_g` must be 2 x 2"):
        ekfac_scalings(a, g, I3, I3)
    with pytest.raises(ValueError, match="`a` has 4 rows but `g` has 3"):
        ekfac_scalings(a, asarray(xp, np.ones((3, 2))), I2, I3)
    S = asarray(xp, np.ones((2, 3)))
    with pytest.raises(ValueError, match="`scalings` must have shape"):
        ekfac_update(asarray(xp, np.ones((3, 3))), a, g, I2, I3)
    with pytest.raises(ValueError, match="`decay` must lie in"):
        ekfac_update(S, a, g, I2, I3, decay=1.5)
    with pytest.raises(ValueError, match="`scalings` must be non-negative"):
        ekfac_solve(asarray(xp, np.ones((2, 3))), -S, I2, I3, damping=1.0)
    with pytest.raises(ValueError, match="must be positive; pass damping > 0"):
        ekfac_solve(asarray(xp, np.ones((2, 3))), 0.0 * S, I2, I3, damping=0.0)
    with pytest.raises(ValueError, match=r"`V` must have shape \(\.\.\., 2, 3\)"):
        ekfac_solve(asarray(xp, np.ones((3, 2))), S, I2, I3, damping=1.0)
    with pytest.raises(ValueError, match="`V` contains NaN"):
        ekfac_solve(asarray(xp, np.full((2, 3), np.nan)), S, I2, I3, damping=1.0)
