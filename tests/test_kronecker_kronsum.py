"""KronSumInverse against numpy.linalg.solve of the explicit A⊗B + C⊗D (np.kron)."""

from __future__ import annotations

import numpy as np
import pytest
from _fisher_data import mlp_statistics
from _helpers import asarray, assert_backend, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import KronSum, KronSumInverse, kpsvd

TOL = {"float64": 1e-10, "float32": 2e-4}


def _spd(rng, d, cond=10.0):
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.geomspace(1.0, 1.0 / cond, d)) @ Q.T


def _sym(rng, d, scale=0.3):
    S = rng.standard_normal((d, d))
    return scale * (S + S.T) / 2


def _rel(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@given(p=st.integers(1, 6), q=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_kron_sum_inverse_matches_dense_solve(xp, dtype_name, p, q, seed):
    rng = np.random.default_rng(seed)
    A, B, C, D = _spd(rng, p), _spd(rng, q), _sym(rng, p), _sym(rng, q)
    A, B, C, D = (M.astype(dtype_name).astype(float) for M in (A, B, C, D))
    solver = KronSumInverse(*(asarray(xp, M, dtype_name) for M in (A, B, C, D)))
    M = np.kron(A, B) + np.kron(C, D)
    V = rng.standard_normal((p, q)).astype(dtype_name).astype(float)
    X = solver.apply(asarray(xp, V, dtype_name))
    assert_backend(X, xp, dtype_name)
    ref = np.linalg.solve(M, V.reshape(-1)).reshape(p, q)
    assert _rel(to_np(X), ref) <= TOL[dtype_name] * max(1.0, np.linalg.cond(M) / 100)
    # the row-major identity (L ⊗ R) vec(X) = vec(L X R^T) holds for the solution
    Xn = to_np(X)
    resid = A @ Xn @ B.T + C @ Xn @ D.T - V
    assert np.linalg.norm(resid) <= 50 * TOL[dtype_name] * np.linalg.norm(M, 2) * np.linalg.norm(Xn)


def test_kron_sum_inverse_vector_and_batched_forms(xp):
    rng = np.random.default_rng(1)
    p, q = 4, 3
    A, B, C, D = _spd(rng, p), _spd(rng, q), _sym(rng, p), _sym(rng, q)
    solver = KronSumInverse(*(asarray(xp, M) for M in (A, B, C, D)))
    M = np.kron(A, B) + np.kron(C, D)
    v = rng.standard_normal(p * q)
    x = solver.apply(asarray(xp, v))
    assert tuple(x.shape) == (p * q,)
    assert _rel(to_np(x), np.linalg.solve(M, v)) <= 1e-12
    V = rng.standard_normal((5, p, q))
    X = to_np(solver.apply(asarray(xp, V)))
    ref = np.linalg.solve(M, V.reshape(5, -1).T).T.reshape(5, p, q)
    assert _rel(X, ref) <= 1e-12
    assert solver.positive_definite == bool(np.linalg.eigvalsh(M).min() > 0)


def test_plain_kronecker_inverse_without_c_and_d(xp, dtype_name):
    rng = np.random.default_rng(2)
    A, B = _spd(rng, 5), _spd(rng, 3)
    solver = KronSumInverse(asarray(xp, A, dtype_name), asarray(xp, B, dtype_name))
    V = rng.standard_normal((5, 3))
    ref = np.linalg.solve(A, V) @ np.linalg.inv(B).T
    assert _rel(to_np(solver.apply(asarray(xp, V, dtype_name))), ref) <= TOL[dtype_name] * 10
    assert solver.positive_definite


@pytest.mark.parametrize("pi", [None, 0.5])
def test_damping_is_the_factored_tikhonov_of_the_first_term(xp, pi):
    rng = np.random.default_rng(3)
    # singular first term: damping makes it definite
    Ga, Gb = rng.standard_normal((6, 2)), rng.standard_normal((4, 2))
    A, B, C, D = Ga @ Ga.T, Gb @ Gb.T, _sym(rng, 6, 0.05), _sym(rng, 4, 0.05)
    with pytest.raises(ValueError, match="`A` is not positive definite"):
        KronSumInverse(*(asarray(xp, M) for M in (A, B, C, D)))
    lam = 0.3
    solver = KronSumInverse(*(asarray(xp, M) for M in (A, B, C, D)), damping=lam, pi=pi)
    if pi is None:
        pi = np.sqrt((np.trace(A) / 6) / (np.trace(B) / 4))
    assert solver.pi == pytest.approx(pi)
    M = np.kron(A + pi * np.sqrt(lam) * np.eye(6), B + np.sqrt(lam) / pi * np.eye(4)) + np.kron(C, D)
    V = rng.standard_normal((6, 4))
    ref = np.linalg.solve(M, V.reshape(-1)).reshape(6, 4)
    assert _rel(to_np(solver.apply(asarray(xp, V))), ref) <= 1e-10


def test_inverse_of_a_two_term_kpsvd_of_a_real_layer(xp):
    """The paper's use: F ≈ L1⊗R1 + L2⊗R2 from Lanczos, damped, solved in matrix form."""
    a, g = mlp_statistics()
    ks = kpsvd(asarray(xp, a), asarray(xp, g), terms=2, method="lanczos", tol=1e-10)
    solver = ks.inverse(damping=1e-3)
    L1, R1, L2, R2 = (to_np(M) for M in (ks.left[0], ks.right[0], ks.left[1], ks.right[1]))
    s = np.sqrt(1e-3)
    pi = solver.pi
    M = np.kron(L1 + pi * s * np.eye(L1.shape[0]), R1 + s / pi * np.eye(R1.shape[0])) + np.kron(L2, R2)
    V = np.random.default_rng(4).standard_normal((g.shape[1], a.shape[1]))
    ref = np.linalg.solve(M, V.reshape(-1)).reshape(V.shape)
    assert _rel(to_np(solver.apply(asarray(xp, V))), ref) <= 1e-10 * max(1.0, np.linalg.cond(M) / 1e3)
    assert solver.positive_definite == bool(np.linalg.eigvalsh(M).min() > 0)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"A": -np.eye(3)}, ValueError, "`A` is not positive definite"),
        ({"B": np.diag([1.0, 0.0])}, ValueError, "`B` is not positive definite"),
        ({"A": np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])}, ValueError, "`A` must be symmetric"),
        ({"C": np.eye(2)}, ValueError, "`C` must be 3 x 3"),
        ({"D": None}, ValueError, "`C` and `D` must be given together"),
        ({"A": np.ones((3, 2))}, ValueError, "`A` must be square"),
        ({"B": np.full((2, 2), np.inf)}, ValueError, "`B` contains NaN or infinity"),
        ({"C": -np.eye(3), "D": np.eye(2)}, ValueError, "singular"),
        ({"damping": -1.0}, ValueError, "`damping` must lie in"),
    ],
)
def test_kron_sum_inverse_rejects_bad_input(xp, change, error, match):
    args = {"A": np.eye(3), "B": np.eye(2), "C": 0.5 * np.eye(3), "D": np.eye(2), "damping": 0.0}
    args.update(change)
    arrays = {k: asarray(xp, v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    with pytest.raises(error, match=match):
        KronSumInverse(arrays["A"], arrays["B"], arrays["C"], arrays["D"], damping=arrays["damping"])


def test_apply_and_kron_sum_reject_bad_shapes(xp):
    solver = KronSumInverse(asarray(xp, np.eye(3)), asarray(xp, np.eye(2)))
    with pytest.raises(ValueError, match="`V` has length 5"):
        solver.apply(asarray(xp, np.ones(5)))
    with pytest.raises(ValueError, match=r"`V` must be a vector of length 6 or matrices of shape \(\.\.\., 3, 2\)"):
        solver.apply(asarray(xp, np.ones((2, 3))))
    with pytest.raises(ValueError, match="KronSumInverse handles one or two terms"):
        KronSumInverse.from_kronsum(KronSum((asarray(xp, np.eye(2)),) * 3, (asarray(xp, np.eye(2)),) * 3))
    with pytest.raises(ValueError, match="as many left as right"):
        KronSum((asarray(xp, np.eye(2)),), ()).to_dense()
    with pytest.raises(TypeError, match="must be a KronSum"):
        KronSumInverse.from_kronsum((np.eye(2), np.eye(2)))
