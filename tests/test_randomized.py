"""rsvd / reigh against dense float64 NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import RTOL, asarray, assert_backend, assert_orthonormal, to_np

from lowrank_online import reigh, rsvd


def _low_rank_plus_noise(rng, m, n, k, noise=1e-3, decay=0.7):
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = 10.0 * decay ** np.arange(k)
    return U @ np.diag(s) @ V.T + noise * rng.standard_normal((m, n))


def _psd(rng, d, k, noise=1e-3, decay=0.7):
    B = rng.standard_normal((d, k)) * decay ** np.arange(k)
    return B @ B.T + noise * np.eye(d)


def test_rsvd_recovers_low_rank_plus_noise(xp, dtype_name):
    rng = np.random.default_rng(0)
    X = _low_rank_plus_noise(rng, 150, 100, 10)
    res = rsvd(asarray(xp, X, dtype_name), 10, seed=1)
    ref = np.linalg.svd(X, compute_uv=False)
    tol = {"float64": 1e-6, "float32": 1e-4}[dtype_name]  # randomized: noise floor of the sketch
    np.testing.assert_allclose(to_np(res.S), ref[:10], rtol=tol)
    assert_orthonormal(res.U, dtype_name)
    assert_orthonormal(res.Vh.T, dtype_name)
    # near-optimal rank-10 approximation (Eckart-Young bound, 1% slack)
    err = np.linalg.norm(X - to_np(res.U) @ np.diag(to_np(res.S)) @ to_np(res.Vh), 2)
    assert err <= 1.01 * ref[10]
    for out in res:
        assert_backend(out, xp, dtype_name)


def test_rsvd_is_exact_on_exactly_low_rank_input(xp):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((80, 6)) @ rng.standard_normal((6, 60))
    res = rsvd(asarray(xp, X), 6, oversample=4, n_iter=1, seed=0)
    recon = to_np(res.U) @ np.diag(to_np(res.S)) @ to_np(res.Vh)
    np.testing.assert_allclose(recon, X, atol=RTOL["float64"] * np.linalg.norm(X))


def test_power_iterations_rescue_slowly_decaying_spectrum():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(2)
    X = _low_rank_plus_noise(rng, 200, 200, 200, noise=0.0, decay=0.98)
    ref = np.linalg.svd(X, compute_uv=False)
    errs = []
    for q in (0, 4):
        res = rsvd(xp.asarray(X), 10, n_iter=q, method="subspace", seed=3)
        errs.append(np.linalg.norm(X - res.U @ np.diag(res.S) @ res.Vh, 2) / ref[10])
    assert errs[1] < errs[0] and errs[1] < 1.05


def test_rsvd_same_seed_same_result_on_every_backend(xp):
    rng = np.random.default_rng(4)
    X = _low_rank_plus_noise(rng, 120, 90, 12)
    import array_api_compat.numpy as npx

    ref = rsvd(npx.asarray(X), 8, seed=42)
    res = rsvd(asarray(xp, X), 8, seed=42)
    np.testing.assert_allclose(to_np(res.U), ref.U, atol=1e-10)
    np.testing.assert_allclose(to_np(res.S), ref.S, rtol=1e-12)
    again = rsvd(asarray(xp, X), 8, seed=np.random.default_rng(42))
    np.testing.assert_allclose(to_np(again.S), ref.S, rtol=1e-12)


def test_rsvd_dense_fallback_matches_svd(xp):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((20, 12))
    res = rsvd(asarray(xp, X), 5, oversample=10, seed=0)  # 15 >= 0.8 * 12: dense path
    np.testing.assert_allclose(to_np(res.S), np.linalg.svd(X, compute_uv=False)[:5], rtol=1e-12)


class _Operator:
    """A matrix-free operator in a given namespace (exposes __array_namespace__)."""

    def __init__(self, X, xp):
        self._X, self._xp = X, xp
        self.shape, self.dtype = tuple(X.shape), X.dtype
        self.calls = 0

    def __array_namespace__(self, api_version=None):
        return self._xp

    def matmat(self, V):
        self.calls += 1
        return self._X @ V

    def rmatmat(self, U):
        self.calls += 1
        return self._X.T @ U


def test_rsvd_and_reigh_accept_operators(xp):
    rng = np.random.default_rng(6)
    X = _low_rank_plus_noise(rng, 90, 70, 8)
    op = _Operator(asarray(xp, X), xp)
    res = rsvd(op, 6, method="subspace", seed=0)
    ref = rsvd(asarray(xp, X), 6, method="subspace", seed=0)
    np.testing.assert_allclose(to_np(res.S), to_np(ref.S), rtol=1e-12)
    assert op.calls == 2 * 4 + 2
    op = _Operator(asarray(xp, X), xp)
    res = rsvd(op, 6, n_iter=1, seed=0)  # block Krylov: 2 steps, each a product with X and X^T
    ref = rsvd(asarray(xp, X), 6, n_iter=1, seed=0)
    np.testing.assert_allclose(to_np(res.S), to_np(ref.S), rtol=1e-12)
    assert op.calls == 2 * 2
    P = _psd(rng, 80, 8)
    op = _Operator(asarray(xp, P), xp)
    res = reigh(op, 5, method="subspace", seed=0)
    assert op.calls == 4 + 1  # one product per power iteration, one for the Nystrom step
    np.testing.assert_allclose(to_np(res.eigenvalues), np.linalg.eigvalsh(P)[::-1][:5], rtol=1e-8)
    op = _Operator(asarray(xp, P), xp)
    res = reigh(op, 5, n_iter=1, seed=0)  # block Krylov: one product per step, Nystrom for free
    assert op.calls == 1 + 1
    np.testing.assert_allclose(to_np(res.eigenvalues), np.linalg.eigvalsh(P)[::-1][:5], rtol=1e-8)


def test_scipy_linear_operator_is_an_operator():
    from scipy.sparse.linalg import aslinearoperator

    rng = np.random.default_rng(7)
    X = _low_rank_plus_noise(rng, 60, 50, 6)
    res = rsvd(aslinearoperator(X), 4, seed=0)
    np.testing.assert_allclose(res.S, np.linalg.svd(X, compute_uv=False)[:4], rtol=1e-8)


def test_reigh_matches_dense_eigh(xp, dtype_name):
    rng = np.random.default_rng(8)
    P = _psd(rng, 150, 12)
    res = reigh(asarray(xp, P, dtype_name), 10, seed=0)
    w, V = np.linalg.eigh(P)
    w, V = w[::-1], V[:, ::-1]
    np.testing.assert_allclose(to_np(res.eigenvalues), w[:10], rtol={"float64": 1e-8, "float32": 1e-4}[dtype_name])
    assert_orthonormal(res.eigenvectors, dtype_name)
    # eigenvectors of well-separated eigenvalues agree up to the sign convention
    got = to_np(res.eigenvectors)[:, :6]
    np.testing.assert_allclose(
        np.abs(np.sum(got * V[:, :6], axis=0)), 1.0, atol=1e-6 if dtype_name == "float64" else 1e-3
    )
    assert_backend(res.eigenvalues, xp, dtype_name)
    assert_backend(res.eigenvectors, xp, dtype_name)


def test_reigh_reconstruction_matches_rsvd_with_half_the_products():
    # spectral-norm reconstruction error (not eigenvalue accuracy: see reigh's Notes)
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(9)
    P = _psd(rng, 300, 300, noise=0.0, decay=0.97)
    w = np.linalg.eigvalsh(P)[::-1]
    ops = {}
    for name, fn in (("reigh", reigh), ("rsvd", rsvd)):
        op = _Operator(xp.asarray(P), xp)
        res = fn(op, 20, n_iter=2, method="subspace", seed=0)
        lam = res.eigenvalues if name == "reigh" else res.S
        vec = res.eigenvectors if name == "reigh" else res.U
        ops[name] = (op.calls, np.linalg.norm(P - vec @ np.diag(lam) @ vec.T, 2) / w[20])
    assert ops["reigh"][0] * 2 == ops["rsvd"][0]
    assert ops["reigh"][1] <= 1.1 * ops["rsvd"][1]


def test_reigh_eigenvalue_error_follows_the_nystrom_power():
    # (lambda_{l+1}/lambda_j)^(2q+1) for reigh vs ^(4q+2) for rsvd: doubling reigh's n_iter
    # (and adding one) brings it to rsvd's eigenvalue accuracy.
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(12)
    d, k = 400, 20
    B = rng.standard_normal((d, 4 * k)) * (0.95 ** np.arange(4 * k))
    P = B @ B.T
    w = np.linalg.eigvalsh(P)[::-1][:k]
    err = lambda lam: np.max(np.abs(lam - w) / w)  # noqa: E731
    sub = {"method": "subspace", "seed": 0}
    e_rsvd = err(rsvd(xp.asarray(P), k, n_iter=2, **sub).S)
    e_reigh_same = err(reigh(xp.asarray(P), k, n_iter=2, **sub).eigenvalues)
    e_reigh_double = err(reigh(xp.asarray(P), k, n_iter=5, **sub).eigenvalues)
    assert e_reigh_same > 10 * e_rsvd
    assert e_reigh_double < 10 * e_rsvd


def test_reigh_on_rank_deficient_input_returns_zero_eigenvalues(xp):
    rng = np.random.default_rng(10)
    B = rng.standard_normal((60, 3))
    res = reigh(asarray(xp, B @ B.T), 6, oversample=5, seed=0)
    lam = to_np(res.eigenvalues)
    np.testing.assert_allclose(lam[:3], np.linalg.eigvalsh(B @ B.T)[::-1][:3], rtol=1e-8)
    assert np.all(np.abs(lam[3:]) <= 1e-10 * lam[0])
    assert_orthonormal(res.eigenvectors, "float64")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda xp, X: rsvd(X, 0), ValueError, "`rank` must be an integer in"),
        (lambda xp, X: rsvd(X, 50), ValueError, "`rank` must be an integer in"),
        (lambda xp, X: rsvd(X, 2, oversample=-1), ValueError, "`oversample`"),
        (lambda xp, X: rsvd(X, 2, n_iter=1.5), TypeError, "`n_iter` must be an integer"),
        (lambda xp, X: rsvd(X, 2, seed="a"), TypeError, "`seed` must be None"),
        (lambda xp, X: reigh(X, 2), ValueError, "`X` must be square"),
        (
            lambda xp, X: reigh(X[:10, :10] + 1.0 * asarray(xp, np.triu(np.ones((10, 10)))), 2),
            ValueError,
            "must be symmetric",
        ),
        (lambda xp, X: rsvd(X * float("nan"), 2), ValueError, "`X` contains NaN"),
        (lambda xp, X: rsvd(object(), 2), TypeError, "`X` must be an array or an operator"),
    ],
)
def test_randomized_rejects_bad_input(xp, call, error, match):
    X = asarray(xp, np.random.default_rng(11).standard_normal((20, 12)))
    with pytest.raises(error, match=match):
        call(xp, X)


@pytest.mark.parametrize("operator", [False, True], ids=["array", "operator"])
def test_reigh_refuses_an_asymmetric_matrix_from_its_first_sketch(xp, operator):
    """The sketch test (no pass over X of its own) refuses arrays and operators alike."""
    rng = np.random.default_rng(12)
    B = rng.standard_normal((80, 80))
    P = B @ B.T
    bad = P + 1e-5 * np.linalg.norm(P) * np.triu(rng.standard_normal((80, 80))) / 80
    X = asarray(xp, bad)
    with pytest.raises(ValueError, match=r"`X` must be symmetric; .*estimated from the first sketch"):
        reigh(_Operator(X, xp) if operator else X, 4, n_iter=1, seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reigh_sketch_symmetry_test_separates_rounding_from_real_asymmetry(dtype):
    """Over 20 seeds: an asymmetric part 100x above sqrt(eps) (relative, Frobenius) is always
    refused; one 100x below it, far above rounding, is always accepted."""
    rng = np.random.default_rng(13)
    d = 300
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    P = (Q * 0.97 ** np.arange(d)) @ Q.T
    P = (P + P.T) / 2
    S = rng.standard_normal((d, d))
    S = (S - S.T) / np.linalg.norm(S - S.T)  # unit antisymmetric direction
    root_eps = float(np.finfo(dtype).eps) ** 0.5
    for factor, refused in ((100.0, True), (0.01, False)):
        X = (P + factor * root_eps * np.linalg.norm(P) * S).astype(dtype)
        for seed in range(20):
            if refused:
                with pytest.raises(ValueError, match="must be symmetric"):
                    reigh(X, 5, oversample=5, n_iter=1, seed=seed)
            else:
                reigh(X, 5, oversample=5, n_iter=1, seed=seed)


def test_reigh_tests_symmetry_entrywise_when_there_is_no_sketch():
    """Subspace iteration with n_iter=0 (orthonormalised G), a one-column sketch, block Krylov
    with one-column blocks and the dense path: arrays get the entrywise test; symmetric input
    passes them all."""
    rng = np.random.default_rng(14)
    B = rng.standard_normal((60, 60))
    P = B @ B.T
    bad = P + 1e-3 * np.triu(np.ones((60, 60)))
    for kwargs in ({"rank": 4, "n_iter": 0, "method": "subspace"}, {"rank": 1, "oversample": 0, "method": "subspace"},
                   {"rank": 2, "oversample": 0, "block_size": 1}, {"rank": 50}):
        with pytest.raises(ValueError, match=r"max \|X - X\^T\|"):
            reigh(bad, seed=0, **kwargs)
        reigh(P, seed=0, **kwargs)


def test_operator_returning_wrong_shape_is_reported():
    import array_api_compat.numpy as xp

    class Bad(_Operator):
        def matmat(self, V):
            return self._X @ V[:, :1]

    with pytest.raises(ValueError, match=r"operator `X`.matmat returned \(30, 1\)"):
        rsvd(Bad(xp.asarray(np.ones((30, 30))), xp), 2)
