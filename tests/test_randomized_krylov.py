"""Block Krylov rsvd / reigh, the a-posteriori error estimate and tol, against dense float64
NumPy references on every backend."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from _helpers import asarray, assert_backend, assert_orthonormal, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import EighResult, ErrorEstimate, REighResult, RSVDResult, SVDResult, reigh, rsvd
from lowrank_online.randomized import default_block_size

TOL = {"float64": 1e-9, "float32": 2e-4}  # relative error of the top values


def _rotations(rng, m, n):
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return U, V


def _matrix(rng, m, n, s):
    U, V = _rotations(rng, m, n)
    return (U[:, : s.size] * s) @ V[:, : s.size].T


def _psd(rng, d, s):
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = (U[:, : s.size] * s) @ U[:, : s.size].T
    return (X + X.T) / 2


class _Counted:
    """Operator counting matrix-vector products (a k-column product counts k)."""

    def __init__(self, X, xp):
        self._X, self._xp = X, xp
        self.shape, self.dtype = tuple(X.shape), X.dtype
        self.products = 0

    def __array_namespace__(self, api_version=None):
        return self._xp

    def matmat(self, V):
        self.products += V.shape[1]
        return self._X @ V

    def rmatmat(self, U):
        self.products += U.shape[1]
        return self._X.T @ U


# ---------------------------------------------------------------------------------------------
# against the dense references
# ---------------------------------------------------------------------------------------------
def test_block_krylov_rsvd_matches_dense_svd(xp, dtype_name):
    rng = np.random.default_rng(0)
    s = 0.8 ** np.arange(120)
    X = _matrix(rng, 200, 150, s)
    res = rsvd(asarray(xp, X, dtype_name), 10, seed=1)
    assert isinstance(res, SVDResult) and res.error is None
    np.testing.assert_allclose(to_np(res.S), s[:10], rtol=TOL[dtype_name])
    assert_orthonormal(res.U, dtype_name)
    assert_orthonormal(res.Vh.T, dtype_name)
    err = np.linalg.norm(X - to_np(res.U) @ np.diag(to_np(res.S)) @ to_np(res.Vh), 2)
    assert err <= 1.001 * s[10]
    for out in res:
        assert_backend(out, xp, dtype_name)


def test_block_krylov_reigh_matches_dense_eigh(xp, dtype_name):
    rng = np.random.default_rng(1)
    s = 0.8 ** np.arange(120)
    P = _psd(rng, 200, s)
    res = reigh(asarray(xp, P, dtype_name), 10, seed=2)
    assert isinstance(res, EighResult) and res.error is None
    np.testing.assert_allclose(to_np(res.eigenvalues), s[:10], rtol=TOL[dtype_name])
    assert_orthonormal(res.eigenvectors, dtype_name)
    w, V = np.linalg.eigh(P)
    got = to_np(res.eigenvectors)[:, :6]
    np.testing.assert_allclose(np.abs(np.sum(got * V[:, ::-1][:, :6], axis=0)), 1.0,
                               atol=1e-8 if dtype_name == "float64" else 1e-3)
    assert_backend(res.eigenvalues, xp, dtype_name)
    assert_backend(res.eigenvectors, xp, dtype_name)


def test_block_krylov_same_seed_same_result_on_every_backend(xp):
    import array_api_compat.numpy as npx

    rng = np.random.default_rng(2)
    X = _matrix(rng, 150, 120, 0.9 ** np.arange(100))
    P = _psd(rng, 150, 0.9 ** np.arange(100))
    ref, res = rsvd(npx.asarray(X), 8, seed=5), rsvd(asarray(xp, X), 8, seed=5)
    np.testing.assert_allclose(to_np(res.S), ref.S, rtol=1e-12)
    np.testing.assert_allclose(to_np(res.U), ref.U, atol=1e-9)
    ref, res = reigh(npx.asarray(P), 8, seed=5), reigh(asarray(xp, P), 8, seed=5)
    np.testing.assert_allclose(to_np(res.eigenvalues), ref.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(to_np(res.eigenvectors), ref.eigenvectors, atol=1e-9)


def test_block_krylov_with_full_blocks_dominates_subspace_iteration_at_equal_products():
    """block_size = rank + oversample and the same n_iter: the same products, and the Krylov
    space contains the last power iterate, so the values are at least as accurate."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(3)
    s = 1.0 / (1.0 + np.arange(300))  # slow decay
    X, P = _matrix(rng, 300, 300, s), _psd(rng, 300, s)
    err = lambda v: np.max(np.abs(np.asarray(v) - s[:20]) / s[:20])  # noqa: E731
    for fn, out in ((rsvd, "S"), (reigh, "eigenvalues")):
        A = P if fn is reigh else X
        for q in (1, 3):
            ops = [_Counted(xp.asarray(A), xp) for _ in range(2)]
            sub = getattr(fn(ops[0], 20, oversample=10, n_iter=q, method="subspace", seed=0), out)
            kry = getattr(fn(ops[1], 20, oversample=10, n_iter=q, block_size=30, seed=0), out)
            assert ops[0].products == ops[1].products
            assert err(kry) <= err(sub), (fn.__name__, q, err(kry), err(sub))


def test_block_krylov_needs_far_fewer_products_on_slow_decay():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(4)
    s = 1.0 / (1.0 + np.arange(400))
    P = _psd(rng, 400, s)
    counts = {}
    for method in ("subspace", "block_krylov"):
        for q in range(40):
            op = _Counted(xp.asarray(P), xp)
            lam = reigh(op, 30, n_iter=q, method=method, seed=0).eigenvalues
            if np.max(np.abs(lam - s[:30]) / s[:30]) <= 1e-6:
                counts[method] = op.products
                break
    assert counts["block_krylov"] * 3 <= counts["subspace"], counts


def test_default_block_size_and_depth():
    assert default_block_size(60) == 20 and default_block_size(20) == 16 and default_block_size(8) == 8
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(5)
    X = _matrix(rng, 500, 400, 0.9 ** np.arange(300))
    op = _Counted(xp.asarray(X), xp)
    rsvd(op, 50, seed=0)  # k = 60, b = 20: ceil(3 k / b) = 9 steps, the products of subspace n_iter=2
    assert op.products == 2 * 9 * 20
    op = _Counted(xp.asarray(X), xp)
    rsvd(op, 50, n_iter=1, block_size=10, seed=0)  # at least ceil(rank / b) = 5 steps
    assert op.products == 2 * 5 * 10


# ---------------------------------------------------------------------------------------------
# the error estimate and tol
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["block_krylov", "subspace"])
def test_estimate_matches_the_true_residuals_and_error(xp, method):
    rng = np.random.default_rng(6)
    s = 0.85 ** np.arange(150)
    X, P = _matrix(rng, 240, 200, s), _psd(rng, 240, s)
    for fn, A in ((rsvd, X), (reigh, P)):
        op = _Counted(asarray(xp, A), xp)
        res = fn(op, 12, n_iter=2, method=method, estimate_error=True, seed=1)
        est = res.error
        assert isinstance(est, ErrorEstimate)
        if fn is rsvd:
            U, S, V = to_np(res.U), to_np(res.S), to_np(res.Vh).T
        else:
            U, S = to_np(res.eigenvectors), to_np(res.eigenvalues)
            V = U
        true = np.linalg.norm(A @ V - U * S, axis=0)
        np.testing.assert_allclose(to_np(est.residuals), true, rtol=1e-6, atol=1e-13 * s[0])
        if fn is rsvd:  # the other side is exact by construction
            assert np.max(np.linalg.norm(A.T @ U - V * S, axis=0)) <= 1e-12 * s[0]
        frob = np.linalg.norm(A - (U * S) @ V.T)
        assert 0.5 * frob <= est.frobenius <= 2.0 * frob, (est.frobenius, frob)
        assert est.n_products == op.products and est.probes == 10
        assert est.converged is None
        assert_backend(est.residuals, xp, "float64")


def test_estimate_on_the_dense_path_is_exact():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((30, 20))
    res = rsvd(X, 5, oversample=10, estimate_error=True, seed=0)  # k = 15 >= 0.8 * 20
    s = np.linalg.svd(X, compute_uv=False)
    assert res.error.probes == 0 and res.error.n_products == 0
    np.testing.assert_allclose(res.error.frobenius, np.sqrt(np.sum(s[5:] ** 2)), rtol=1e-12)
    P = X @ X.T
    res = reigh(P, 25, estimate_error=True, tol=1e-3, seed=0)
    assert res.error.converged is True
    w = np.linalg.eigvalsh(P)[::-1]
    np.testing.assert_allclose(res.error.frobenius, np.sqrt(np.sum(np.clip(w[25:], 0, None) ** 2)), atol=1e-9)


@pytest.mark.parametrize("fn", [rsvd, reigh], ids=["rsvd", "reigh"])
def test_tol_stops_once_every_residual_meets_it(xp, fn):
    rng = np.random.default_rng(8)
    s = 1.0 / (1.0 + np.arange(250))
    A = _psd(rng, 250, s) if fn is reigh else _matrix(rng, 250, 220, s[:220])
    steps = {}
    for tol in (1e-2, 1e-5, 1e-8):
        res = fn(asarray(xp, A), 8, tol=tol, seed=0)
        est = res.error
        vals = to_np(res.S if fn is rsvd else res.eigenvalues)
        assert est.converged is True
        assert np.all(to_np(est.residuals) <= tol * vals + 1e-12)
        # the singular values are within the residuals of the true ones (Weyl)
        assert np.all(np.abs(vals - s[:8]) <= to_np(est.residuals) + 1e-12)
        steps[tol] = est.iterations
    assert steps[1e-2] < steps[1e-5] < steps[1e-8]


def test_tol_not_met_within_n_iter_warns_and_says_so():
    rng = np.random.default_rng(9)
    s = 1.0 / (1.0 + np.arange(300))
    X = _matrix(rng, 300, 300, s)
    with pytest.warns(RuntimeWarning, match=r"rsvd did not reach tol=1.0e-10 in 2 block steps"):
        res = rsvd(X, 10, tol=1e-10, n_iter=1, seed=0)
    assert res.error.converged is False and res.error.iterations == 2
    with pytest.warns(RuntimeWarning, match="reigh did not reach"):
        res = reigh(_psd(rng, 300, s), 10, tol=1e-10, n_iter=1, seed=0)
    assert res.error.converged is False


def test_results_unpack_like_before_and_keep_the_estimate():
    rng = np.random.default_rng(10)
    X = _matrix(rng, 120, 100, 0.8 ** np.arange(80))
    res = rsvd(X, 5, estimate_error=True, seed=0)
    U, S, Vh = res
    assert len(res) == 3 and isinstance(res, RSVDResult) and isinstance(res, SVDResult)
    assert res == (U, S, Vh) or all(a is b for a, b in zip(res, (U, S, Vh), strict=True))
    back = pickle.loads(pickle.dumps(res))
    np.testing.assert_array_equal(back.error.residuals, res.error.residuals)
    assert res._replace(S=S * 2).error is None  # a modified result no longer carries the estimate
    lam, V = reigh(X @ X.T, 4, seed=0)
    assert isinstance(reigh(X @ X.T, 4, seed=0), REighResult) and lam.shape == (4,) and V.shape == (120, 4)


# ---------------------------------------------------------------------------------------------
# structure and arguments
# ---------------------------------------------------------------------------------------------
@given(
    m=st.integers(60, 140),
    n=st.integers(60, 140),
    true_rank=st.integers(1, 12),
    rank=st.integers(1, 8),
    block=st.integers(1, 20),
    structure=st.sampled_from(["generic", "duplicate", "zero"]),
    seed=st.integers(0, 2**16),
)
def test_block_krylov_is_exact_on_low_rank_input_of_any_structure(m, n, true_rank, rank, block, structure, seed):
    """Once the Krylov space has more directions than rank(A), it holds range(A): the result is
    exact to rounding, whatever the block size, with duplicate or zero columns."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, true_rank)) @ rng.standard_normal((true_rank, n))
    if structure == "duplicate":
        A[:, n // 2:] = A[:, : n - n // 2]
    elif structure == "zero":
        A[:, :3] = 0.0
    ref = np.linalg.svd(A, compute_uv=False)
    b = min(block, rank + 4)
    q = -(-true_rank // b)  # q + 1 steps: a Krylov space of more than rank(A) directions
    res = rsvd(A, rank, oversample=4, block_size=b, n_iter=q, seed=seed, estimate_error=True)
    np.testing.assert_allclose(res.S, ref[:rank], atol=1e-9 * ref[0], rtol=1e-8)
    assert_orthonormal(res.U, "float64")
    assert_orthonormal(res.Vh.T, "float64")
    P = A @ A.T
    lam = reigh(P, rank, oversample=4, block_size=b, n_iter=q, seed=seed).eigenvalues
    np.testing.assert_allclose(lam, ref[:rank] ** 2, atol=1e-9 * ref[0] ** 2, rtol=1e-7)


def test_block_krylov_on_zero_and_rank_deficient_psd_input(xp):
    res = reigh(asarray(xp, np.zeros((80, 80))), 4, oversample=4, seed=0, estimate_error=True)
    assert np.all(to_np(res.eigenvalues) == 0.0) and res.error.frobenius == 0.0
    assert_orthonormal(res.eigenvectors, "float64")
    res = rsvd(asarray(xp, np.zeros((80, 60))), 3, oversample=4, seed=0)
    assert np.all(to_np(res.S) == 0.0)
    assert_orthonormal(res.U, "float64")
    B = np.random.default_rng(11).standard_normal((80, 2))
    res = reigh(asarray(xp, B @ B.T), 5, oversample=4, seed=0)
    lam = to_np(res.eigenvalues)
    np.testing.assert_allclose(lam[:2], np.linalg.eigvalsh(B @ B.T)[::-1][:2], rtol=1e-10)
    assert np.all(np.abs(lam[2:]) <= 1e-12 * lam[0])
    assert_orthonormal(res.eigenvectors, "float64")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "lanczos"}, ValueError, "`method` must be one of 'subspace', 'block_krylov'"),
        ({"tol": 0.0}, ValueError, r"`tol` must lie in \(0.0, 1.0\)"),
        ({"tol": 1.5}, ValueError, "`tol` must lie in"),
        ({"tol": "a"}, TypeError, "`tol` must be a real number"),
        ({"tol": 1e-3, "method": "subspace"}, ValueError, "`tol` needs method='block_krylov'"),
        ({"estimate_error": 1}, TypeError, "`estimate_error` must be a bool"),
        ({"block_size": 0}, ValueError, "`block_size` must be an integer in"),
        ({"block_size": 2.0}, TypeError, "`block_size` must be an integer"),
        ({"block_size": 4, "method": "subspace"}, ValueError, "`block_size` applies to method='block_krylov'"),
        ({"n_iter": -1}, ValueError, "`n_iter` must be an integer"),
    ],
)
def test_block_krylov_rejects_bad_arguments(kwargs, error, match):
    X = np.random.default_rng(12).standard_normal((40, 40))
    for fn, A in ((rsvd, X), (reigh, X @ X.T)):
        with pytest.raises(error, match=match):
            fn(A, 3, **kwargs)


def test_scipy_linear_operator_and_float32_operator():
    from scipy.sparse.linalg import aslinearoperator

    rng = np.random.default_rng(13)
    s = 0.8 ** np.arange(100)
    X = _matrix(rng, 200, 160, s)
    res = rsvd(aslinearoperator(X), 6, seed=0, tol=1e-8)
    np.testing.assert_allclose(res.S, s[:6], rtol=1e-12)
    res = rsvd(aslinearoperator(X.astype(np.float32)), 6, seed=0)
    assert res.U.dtype == np.float32
    np.testing.assert_allclose(res.S, s[:6], rtol=1e-5)
