"""tkfac_factors: the trace identity of eq. (4.9), partial traces of the dense Fisher, damping."""

from __future__ import annotations

import numpy as np
import pytest
from _fisher_data import dense_fisher, mlp_statistics, random_statistics
from _helpers import asarray, assert_backend, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import KronSumInverse, tkfac_factors

TRACE_TOL = {"float64": 1e-14, "float32": 1e-6}


def _partial_traces(F, d_g, d_a):
    """tr over the a-side blocks (d_g x d_g result) and over the g-side (d_a x d_a result)."""
    T = F.reshape(d_g, d_a, d_g, d_a)
    return np.einsum("iaja->ij", T), np.einsum("iaib->ab", T)


@pytest.mark.parametrize("kind", ["mlp", "random"])
def test_trace_identity_and_unit_traces(xp, dtype_name, kind):
    a, g = mlp_statistics() if kind == "mlp" else random_statistics(50, 7, 4, seed=1)
    f = tkfac_factors(asarray(xp, a, dtype_name), asarray(xp, g, dtype_name))
    for M in (f.delta, f.Phi, f.Psi):
        assert_backend(M, xp, dtype_name)
    Phi, Psi, delta = to_np(f.Phi), to_np(f.Psi), float(f.delta)
    tol = TRACE_TOL[dtype_name]
    assert abs(np.trace(Phi) - 1.0) <= 4 * tol and abs(np.trace(Psi) - 1.0) <= 4 * tol
    F = dense_fisher(a.astype(dtype_name), g.astype(dtype_name))
    trF = np.trace(F)
    # tr(δ Ψ ⊗ Φ) = δ tr Ψ tr Φ = tr F, exactly up to rounding
    assert abs(np.trace(np.kron(delta * Psi, Phi)) - trF) <= 8 * tol * trF
    assert abs(f.to_kronsum().trace() - trF) <= 8 * tol * trF
    assert abs(delta - trF) <= 4 * tol * trF
    np.testing.assert_array_equal(Phi, Phi.T)
    assert np.linalg.eigvalsh(Phi).min() >= -tol and np.linalg.eigvalsh(Psi).min() >= -tol


@given(n=st.integers(1, 20), d_a=st.integers(1, 5), d_g=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_factors_are_normalised_partial_traces_of_the_fisher(n, d_a, d_g, seed):
    """Φ ∝ PTr over the g side, Ψ ∝ PTr over the a side (Lemma 4.1, row-major form)."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(seed)
    a, g = rng.standard_normal((n, d_a)), rng.standard_normal((n, d_g))
    F = dense_fisher(a, g)
    f = tkfac_factors(xp.asarray(a), xp.asarray(g))
    pt_g, pt_a = _partial_traces(F, d_g, d_a)
    np.testing.assert_allclose(f.Psi, pt_g / np.trace(F), atol=1e-14 * np.abs(pt_g).max() / np.trace(F))
    np.testing.assert_allclose(f.Phi, pt_a / np.trace(F), atol=1e-14 * np.abs(pt_a).max() / np.trace(F))
    assert float(f.delta) == pytest.approx(np.trace(F), rel=1e-13)


def test_tkfac_is_exact_on_a_kronecker_block():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(2)
    g = rng.standard_normal((15, 3))
    a = np.tile(rng.standard_normal((1, 4)), (15, 1))
    F = dense_fisher(a, g)
    approx = tkfac_factors(xp.asarray(a), xp.asarray(g)).to_kronsum().to_dense()
    np.testing.assert_allclose(approx, F, atol=1e-13 * np.abs(F).max())


def test_damping_rules(xp):
    a, g = mlp_statistics()
    f = tkfac_factors(asarray(xp, a), asarray(xp, g))
    Phi, Psi, delta = to_np(f.Phi), to_np(f.Psi), float(f.delta)
    lam = 1e-2
    ks = f.damped(lam)  # eq. (5.15)
    np.testing.assert_allclose(to_np(ks.left[0]), np.sqrt(delta) * Psi + np.sqrt(lam) * np.eye(5), rtol=1e-14)
    np.testing.assert_allclose(to_np(ks.right[0]), np.sqrt(delta) * Phi + np.sqrt(lam) * np.eye(9), rtol=1e-14)
    for nu in (1e-3, 10.0):  # eq. (5.16), delta ~ 1 for this layer
        kt = f.damped_trace(nu)
        dt = max(nu, delta)
        np.testing.assert_allclose(to_np(kt.left[0]), np.sqrt(dt) * Psi + dt / 5 * np.eye(5), rtol=1e-14)
        np.testing.assert_allclose(to_np(kt.right[0]), np.sqrt(dt) * Phi + dt / 9 * np.eye(9), rtol=1e-14)
    # the damped factors are positive definite: the Kronecker inverse accepts them
    solver = KronSumInverse.from_kronsum(ks)
    V = np.random.default_rng(0).standard_normal((5, 9))
    M = np.kron(to_np(ks.left[0]), to_np(ks.right[0]))
    np.testing.assert_allclose(to_np(solver.apply(asarray(xp, V))).ravel(), np.linalg.solve(M, V.ravel()), rtol=1e-10)


def test_tkfac_rejects_bad_input(xp):
    with pytest.raises(ValueError, match="the Fisher block is zero"):
        tkfac_factors(asarray(xp, np.zeros((4, 3))), asarray(xp, np.ones((4, 2))))
    with pytest.raises(ValueError, match="`a` has 4 rows but `g` has 5"):
        tkfac_factors(asarray(xp, np.ones((4, 3))), asarray(xp, np.ones((5, 2))))
    with pytest.raises(ValueError, match="`g` contains NaN"):
        tkfac_factors(asarray(xp, np.ones((4, 3))), asarray(xp, np.full((4, 2), np.nan)))
    f = tkfac_factors(asarray(xp, np.ones((4, 3))), asarray(xp, np.ones((4, 2))))
    with pytest.raises(ValueError, match="`damping` must lie in"):
        f.damped(-1.0)
    with pytest.raises(ValueError, match="`nu` must lie in"):
        f.damped_trace(0.0)
