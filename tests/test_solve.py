"""damped_solve against numpy.linalg.solve of the explicit damped matrix."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import asarray, assert_backend, assert_matrix_close, random_basis, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import damped_solve
from lowrank_online.solve import _damped_solve


@given(d=st.integers(1, 30), data=st.data())
def test_damped_solve_matches_dense_solve(xp, dtype_name, d, data):
    r = data.draw(st.integers(0, d))
    k = data.draw(st.integers(1, 5))
    damping = data.draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
    continuation = data.draw(st.booleans())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    Q, L = random_basis(rng, d, r), rng.gamma(2.0, size=r)
    X = rng.standard_normal((d, k))
    got = damped_solve(asarray(xp, L, dtype_name), asarray(xp, Q, dtype_name), asarray(xp, X, dtype_name),
                       damping, continuation=continuation)
    Qc, Lc, Xc = (np.asarray(a, np.dtype(dtype_name)).astype(float) for a in (Q, L, X))
    M = Qc @ np.diag(Lc) @ Qc.T + damping * np.eye(d)
    if continuation and r:
        # the d - r missing eigenvalues are taken equal to min(L) (paper 001, Sec. 3.5)
        M += Lc.min() * (np.eye(d) - Qc @ Qc.T)
    ref = np.linalg.solve(M, Xc)
    cond = np.linalg.cond(M)
    assert_matrix_close(to_np(got), ref, dtype_name, factor=10 * cond)
    assert_backend(got, xp, dtype_name)


@given(d=st.integers(1, 30), data=st.data())
def test_kernel_from_the_right_and_in_place_matches_dense_solve(xp, dtype_name, d, data):
    """The kernel's right-hand layout (``X M^{-1}`` for X: k x d, used for ``grad A^{-1}``) and
    its in-place variant give the dense solution, for matrices and vectors."""
    r = data.draw(st.integers(0, d))
    k = data.draw(st.sampled_from([None, 1, 4]))
    rows, overwrite = data.draw(st.booleans()), data.draw(st.booleans())
    continuation = data.draw(st.booleans())
    damping = data.draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    Q, L = random_basis(rng, d, r), rng.gamma(2.0, size=r)
    shape = (d,) if k is None else ((k, d) if rows else (d, k))
    X = rng.standard_normal(shape)
    Lx, Qx, Xx = (asarray(xp, a, dtype_name) for a in (L, Q, X))
    got = _damped_solve(Lx, Qx, Xx, damping, continuation, xp, rows=rows, overwrite_x=overwrite)
    Qc, Lc, Xc = (np.asarray(a, np.dtype(dtype_name)).astype(float) for a in (Q, L, X))
    M = Qc @ np.diag(Lc) @ Qc.T + damping * np.eye(d)
    if continuation and r:
        M += Lc.min() * (np.eye(d) - Qc @ Qc.T)
    ref = np.linalg.solve(M, Xc.T).T if rows else np.linalg.solve(M, Xc)
    assert got.shape == X.shape
    assert_matrix_close(to_np(got), ref, dtype_name, factor=10 * np.linalg.cond(M))
    assert_backend(got, xp, dtype_name)


def test_damped_solve_vector_and_no_cancellation(xp):
    d = 5
    Q = np.eye(d)[:, :2]
    L = np.array([1e-13, 1e-14])  # L << damping: the bracket must not cancel
    x = np.arange(1.0, d + 1.0)
    got = damped_solve(asarray(xp, L), asarray(xp, Q), asarray(xp, x), 1.0)
    ref = np.linalg.solve(Q @ np.diag(L) @ Q.T + np.eye(d), x)
    assert got.shape == (d,)
    np.testing.assert_allclose(to_np(got), ref, rtol=1e-15)


def test_continuation_with_a_full_basis_changes_nothing(xp):
    rng = np.random.default_rng(1)
    Q, L, X = random_basis(rng, 6, 6), rng.gamma(2.0, size=6), rng.standard_normal((6, 2))
    a = damped_solve(asarray(xp, L), asarray(xp, Q), asarray(xp, X), 0.5)
    b = damped_solve(asarray(xp, L), asarray(xp, Q), asarray(xp, X), 0.5, continuation=True)
    np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-12)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"damping": 0.0}, ValueError, "`damping` must lie in"),
        ({"damping": -1.0}, ValueError, "`damping` must lie in"),
        ({"damping": float("inf")}, ValueError, "`damping` must be finite"),
        ({"X": np.ones((4, 2))}, ValueError, "`X` has 4 rows"),
        ({"eigenvalues": np.ones(3)}, ValueError, "`eigenvectors` has 2 columns"),
        ({"X": np.full((5, 2), np.nan)}, ValueError, "`X` contains NaN"),
    ],
)
def test_damped_solve_rejects_bad_input(xp, change, error, match):
    args = {"eigenvalues": np.ones(2), "eigenvectors": np.eye(5)[:, :2], "X": np.ones((5, 2)), "damping": 1.0}
    args.update(change)
    arrays = {k: asarray(xp, v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    with pytest.raises(error, match=match):
        damped_solve(arrays["eigenvalues"], arrays["eigenvectors"], arrays["X"], arrays["damping"])
