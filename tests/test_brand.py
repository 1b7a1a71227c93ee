"""svd_update / eigh_update against dense float64 NumPy references."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from _helpers import (
    RTOL,
    asarray,
    assert_backend,
    assert_matrix_close,
    assert_orthonormal,
    increment_block,
    random_basis,
    reference_flip,
    to_np,
)
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import DecompositionError, _backend, _linalg, eigh_update, svd_update

STRUCTURES = ["generic", "duplicate", "zero", "in_span", "scaled", "tiny"]


def _cast(a, dtype_name):
    """The exact values the backend sees (rounded to its dtype), as float64."""
    return np.asarray(a, dtype=np.dtype(dtype_name)).astype(np.float64)


@given(d=st.integers(2, 30), data=st.data())
def test_eigh_update_matches_dense_eigh(xp, dtype_name, d, data):
    r = data.draw(st.integers(0, d), label="r")
    n = data.draw(st.integers(1, 10), label="n")
    structure = data.draw(st.sampled_from(STRUCTURES), label="structure")
    decay = data.draw(st.sampled_from([1.0, 0.95, 0.3]), label="decay")
    weight = data.draw(st.sampled_from([1.0, 0.05, 2.0]), label="weight")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    Q = random_basis(rng, d, r)
    L = np.sort(rng.gamma(2.0, size=r))[::-1]
    A = increment_block(rng, Q, n, structure)

    res = eigh_update(asarray(xp, L, dtype_name), asarray(xp, Q, dtype_name), asarray(xp, A, dtype_name),
                      decay=decay, weight=weight)

    Qc, Lc, Ac = _cast(Q, dtype_name), _cast(L, dtype_name), _cast(A, dtype_name)
    X = decay * Qc @ np.diag(Lc) @ Qc.T + weight * Ac @ Ac.T
    ref = np.linalg.eigvalsh(X)[::-1]
    lam, V = to_np(res.eigenvalues), to_np(res.eigenvectors)
    m = lam.shape[0]
    assert V.shape == (d, m) and m <= min(d, r + n)
    assert np.all(np.diff(lam) <= 0) and np.all(lam >= 0)
    scale = max(ref[0], np.finfo(float).tiny)
    assert np.all(np.abs(lam - ref[:m]) <= RTOL[dtype_name] * scale * 10)
    assert_matrix_close(V @ np.diag(lam) @ V.T, X, dtype_name, factor=10)
    assert_orthonormal(V, dtype_name)
    assert_backend(res.eigenvalues, xp, dtype_name)
    assert_backend(res.eigenvectors, xp, dtype_name)


def test_eigh_update_signs_follow_convention_of_dense_reference(xp):
    rng = np.random.default_rng(3)
    d, r, n = 40, 6, 4
    Q = random_basis(rng, d, r)
    L = np.linspace(10.0, 5.0, r)
    A = rng.standard_normal((d, n))
    res = eigh_update(asarray(xp, L), asarray(xp, Q), asarray(xp, A))
    w, V = np.linalg.eigh(Q @ np.diag(L) @ Q.T + A @ A.T)
    ref = reference_flip(V[:, ::-1][:, : r + n])
    np.testing.assert_allclose(to_np(res.eigenvectors), ref, atol=1e-10)


def test_eigh_update_is_deterministic(xp):
    rng = np.random.default_rng(4)
    Q, A = random_basis(rng, 30, 5), rng.standard_normal((30, 3))
    args = (asarray(xp, np.arange(5.0, 0.0, -1.0)), asarray(xp, Q), asarray(xp, A))
    one, two = eigh_update(*args), eigh_update(*args)
    assert np.array_equal(to_np(one.eigenvectors), to_np(two.eigenvectors))
    assert np.array_equal(to_np(one.eigenvalues), to_np(two.eigenvalues))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_eigh_update_rank_keeps_best_rank_k(xp, k):
    rng = np.random.default_rng(5)
    d, r, n = 25, 5, 4
    Q, L = random_basis(rng, d, r), np.array([9.0, 7.0, 5.0, 3.0, 1.0])
    A = rng.standard_normal((d, n))
    res = eigh_update(asarray(xp, L), asarray(xp, Q), asarray(xp, A), rank=k)
    X = Q @ np.diag(L) @ Q.T + A @ A.T
    w, V = np.linalg.eigh(X)
    w, V = w[::-1][:k], V[:, ::-1][:, :k]
    assert to_np(res.eigenvalues).shape == (k,)
    np.testing.assert_allclose(to_np(res.eigenvalues), w, rtol=1e-10)
    best = V @ np.diag(w) @ V.T
    got = to_np(res.eigenvectors) @ np.diag(to_np(res.eigenvalues)) @ to_np(res.eigenvectors).T
    assert_matrix_close(got, best, "float64")


def test_eigh_update_with_n_at_least_d_minus_r_is_exact(xp):
    rng = np.random.default_rng(6)
    d, r, n = 12, 8, 9  # n >= d - r: the complement has rank d - r < n
    Q, L = random_basis(rng, d, r), np.linspace(4.0, 1.0, r)
    A = rng.standard_normal((d, n))
    res = eigh_update(asarray(xp, L), asarray(xp, Q), asarray(xp, A))
    X = Q @ np.diag(L) @ Q.T + A @ A.T
    V, lam = to_np(res.eigenvectors), to_np(res.eigenvalues)
    assert V.shape == (d, d)
    assert_matrix_close(V @ np.diag(lam) @ V.T, X, "float64")
    assert_orthonormal(V, "float64")


def test_eigh_update_empty_block_and_zero_weight_only_decay(xp):
    rng = np.random.default_rng(7)
    Q, L = random_basis(rng, 10, 3), np.array([1.0, 3.0, 2.0])
    for A, weight in ((np.zeros((10, 0)), 1.0), (rng.standard_normal((10, 2)), 0.0)):
        res = eigh_update(asarray(xp, L), asarray(xp, Q), asarray(xp, A), decay=0.5, weight=weight)
        np.testing.assert_allclose(to_np(res.eigenvalues), [1.5, 1.0, 0.5])
        np.testing.assert_allclose(to_np(res.eigenvectors), reference_flip(Q[:, [1, 2, 0]]))


def test_eigh_update_accepts_a_vector(xp):
    Q = np.eye(4)[:, :2]
    res = eigh_update(asarray(xp, [3.0, 1.0]), asarray(xp, Q), asarray(xp, [0.0, 0.0, 2.0, 0.0]), decay=0.5)
    np.testing.assert_allclose(to_np(res.eigenvalues), [4.0, 1.5, 0.5])


def test_eigh_update_float32_overflow_is_retried_in_float64():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(8)
    Q = random_basis(rng, 20, 2).astype(np.float32)
    A = (1e20 * rng.standard_normal((20, 3))).astype(np.float32)  # A^T A overflows float32
    with np.errstate(over="ignore", invalid="ignore"):
        res = eigh_update(xp.asarray(np.ones(2, np.float32)), xp.asarray(Q), xp.asarray(A), weight=1e-12)
    X = Q.astype(float) @ Q.T.astype(float) + 1e-12 * A.astype(float) @ A.T.astype(float)
    assert res.eigenvalues.dtype == np.float32
    ref = np.linalg.eigvalsh(X)[::-1][:5]
    # eigenvalues below the rounding level of X (|X| ~ 3e29) agree only to that level
    np.testing.assert_allclose(np.asarray(res.eigenvalues, float), ref, rtol=1e-5, atol=1e-6 * ref[0])


def test_eigh_update_never_allocates_a_d_by_d_matrix():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(9)
    d, r, n = 4000, 10, 6
    Q, A = random_basis(rng, d, r), rng.standard_normal((d, n))
    L = xp.asarray(np.linspace(2, 1, r))
    Q, A = xp.asarray(Q), xp.asarray(A)
    tracemalloc.start()
    eigh_update(L, Q, A, decay=0.9, weight=0.1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # A d x d float64 matrix would be 128 MB; the update needs a few d x (r + n) blocks.
    assert peak < 20 * d * (r + n) * 8, f"peak {peak / 1e6:.1f} MB"


# --------------------------------------------------------------------------------------------
# svd_update
# --------------------------------------------------------------------------------------------
@given(m=st.integers(2, 25), d=st.integers(2, 25), data=st.data())
def test_svd_update_matches_dense_svd(xp, dtype_name, m, d, data):
    r = data.draw(st.integers(0, min(m, d)), label="r")
    n = data.draw(st.integers(1, 8), label="n")
    structure = data.draw(st.sampled_from(STRUCTURES), label="structure")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    U, V = random_basis(rng, m, r), random_basis(rng, d, r)
    S = np.sort(rng.gamma(2.0, size=r))[::-1]
    A, B = increment_block(rng, U, n, structure), increment_block(rng, V, n, structure)

    res = svd_update(*(asarray(xp, a, dtype_name) for a in (U, S, V.T, A, B)))
    Uc, Sc, Vc, Ac, Bc = (_cast(a, dtype_name) for a in (U, S, V, A, B))
    X = Uc @ np.diag(Sc) @ Vc.T + Ac @ Bc.T
    ref = np.linalg.svd(X, compute_uv=False)
    Un, s, Vh = to_np(res.U), to_np(res.S), to_np(res.Vh)
    p = s.shape[0]
    assert Un.shape == (m, p) and Vh.shape == (p, d) and p <= min(m, d, r + n)
    assert np.all(np.diff(s) <= 0) and np.all(s >= 0)
    assert np.all(np.abs(s - ref[:p]) <= RTOL[dtype_name] * max(ref[0], 1e-300) * 10)
    assert_matrix_close(Un @ np.diag(s) @ Vh, X, dtype_name, factor=10)
    assert_orthonormal(Un, dtype_name)
    assert_orthonormal(Vh.T, dtype_name)
    for out in res:
        assert_backend(out, xp, dtype_name)


def test_svd_update_rank_and_signs(xp):
    rng = np.random.default_rng(10)
    m, d, r, n, k = 30, 20, 4, 3, 5
    U, V = random_basis(rng, m, r), random_basis(rng, d, r)
    S = np.array([8.0, 6.0, 4.0, 2.0])
    A, B = rng.standard_normal((m, n)), rng.standard_normal((d, n))
    res = svd_update(*(asarray(xp, a) for a in (U, S, V.T, A, B)), rank=k)
    Ur, s, Vh = np.linalg.svd(U @ np.diag(S) @ V.T + A @ B.T, full_matrices=False)
    flipped = reference_flip(Ur[:, :k])
    np.testing.assert_allclose(to_np(res.S), s[:k], rtol=1e-10)
    np.testing.assert_allclose(to_np(res.U), flipped, atol=1e-10)
    np.testing.assert_allclose(to_np(res.Vh), Vh[:k] * np.sign(flipped[0] / Ur[0, :k])[:, None], atol=1e-10)


def test_svd_update_accepts_vectors(xp):
    U, S, Vh = np.eye(3)[:, :1], np.array([2.0]), np.eye(4)[:1, :]
    res = svd_update(*(asarray(xp, a) for a in (U, S, Vh, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0])))
    np.testing.assert_allclose(to_np(res.S), [2.0, 1.0])


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _eigh_args(xp, **over):
    rng = np.random.default_rng(11)
    args = {
        "eigenvalues": np.array([2.0, 1.0]),
        "eigenvectors": random_basis(rng, 6, 2),
        "A": rng.standard_normal((6, 3)),
    }
    args.update(over)
    return {k: (asarray(xp, v) if isinstance(v, np.ndarray) else v) for k, v in args.items()}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"A": np.ones((5, 3))}, ValueError, "`A` has 5 rows"),
        ({"eigenvalues": np.ones(3)}, ValueError, "`eigenvectors` has 2 columns"),
        ({"A": np.full((6, 3), np.nan)}, ValueError, "`A` contains NaN"),
        ({"eigenvectors": np.full((6, 2), np.inf)}, ValueError, "`eigenvectors` contains NaN"),
        ({"eigenvalues": np.array([2.0, -1.0])}, ValueError, "`eigenvalues` must be non-negative"),
        ({"A": np.ones((6, 3, 1))}, ValueError, "`A` must be 1-D or 2-D"),
        ({"A": [[1.0]]}, TypeError, "`A` must be an array"),
    ],
)
def test_eigh_update_rejects_bad_arrays(xp, change, error, match):
    with pytest.raises(error, match=match):
        args = _eigh_args(xp, **change)
        eigh_update(args["eigenvalues"], args["eigenvectors"], args["A"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"decay": 0.0}, ValueError, "`decay` must lie in"),
        ({"decay": 1.5}, ValueError, "`decay` must lie in"),
        ({"weight": -1.0}, ValueError, "`weight` must lie in"),
        ({"weight": float("nan")}, ValueError, "`weight` must be finite"),
        ({"rank": 0}, ValueError, "`rank` must be an integer"),
        ({"rank": 1.5}, TypeError, "`rank` must be an integer"),
        ({"decay": "0.5"}, TypeError, "`decay` must be a real number"),
    ],
)
def test_eigh_update_rejects_bad_parameters(xp, kwargs, error, match):
    args = _eigh_args(xp)
    with pytest.raises(error, match=match):
        eigh_update(args["eigenvalues"], args["eigenvectors"], args["A"], **kwargs)


def test_eigh_update_rejects_integer_dtype():
    import array_api_compat.numpy as xp

    with pytest.raises(TypeError, match="`A` must have dtype float32 or float64"):
        eigh_update(xp.asarray([1.0]), xp.asarray(np.eye(3)[:, :1]), xp.asarray(np.ones((3, 2), dtype=np.int64)))
    with pytest.raises(TypeError, match="`eigenvalues` must have dtype"):
        eigh_update(xp.asarray([1.0 + 0j]), xp.asarray(np.eye(3)[:, :1]), xp.asarray(np.ones((3, 2))))


def test_eigh_update_rejects_mixed_namespaces():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="`A` is a torch array but `eigenvalues` is a numpy array"):
        eigh_update(np.ones(1), np.eye(3)[:, :1], torch.ones(3, 2, dtype=torch.float64))


def test_eigh_update_rejects_mixed_devices():
    xs = pytest.importorskip("array_api_strict")
    other = xs.Device("device1")
    with pytest.raises(ValueError, match="`A` is on device"):
        eigh_update(xs.asarray([1.0]), xs.asarray(np.eye(3)[:, :1]), xs.asarray(np.ones((3, 2)), device=other))


def test_svd_update_rejects_bad_input(xp):
    U, S, Vh = np.eye(4)[:, :2], np.array([2.0, 1.0]), np.eye(5)[:2]
    A, B = np.ones((4, 3)), np.ones((5, 3))
    good = [asarray(xp, a) for a in (U, S, Vh, A, B)]
    cases = [
        (3, np.ones((4, 2)), "`A` has 2 columns but `B` has 3"),
        (4, np.ones((6, 3)), "`B` has 6 rows but `Vh` has 5 columns"),
        (1, np.ones(3), "`U` has 2 columns but `S` has 3"),
        (1, np.array([1.0, -1.0]), "`S` must be non-negative"),
        (3, np.full((4, 3), np.nan), "`A` contains NaN"),
    ]
    for pos, bad, match in cases:
        args = list(good)
        args[pos] = asarray(xp, bad)
        with pytest.raises(ValueError, match=match):
            svd_update(*args)
    with pytest.raises(ValueError, match="both be 1-D or both be 2-D"):
        svd_update(*good[:3], asarray(xp, np.ones(4)), good[4])


# --------------------------------------------------------------------------------------------
# wide increments: r + n >= 3d/4, in particular n > d (compressed to A A^T, dense d x d core)
# --------------------------------------------------------------------------------------------
# (d, r, n): n > d with r = 0 (first update) and r > 0, n = d, d - r <= n < d, and
# 3d/4 <= r + n < d, the band where the dense form is cheaper than Brand's although [Q P]
# does not yet span the space.
WIDE_CASES = [(12, 0, 40), (12, 5, 40), (12, 12, 30), (12, 4, 12), (12, 5, 7), (12, 5, 9), (20, 6, 9), (20, 0, 15)]


def _dense_update(L, Q, A, decay, weight, dtype_name):
    """The float64 reference matrix of the update, from the values the backend sees."""
    Qc, Lc, Ac = _cast(Q, dtype_name), _cast(L, dtype_name), _cast(A, dtype_name)
    return decay * (Qc * Lc) @ Qc.T + weight * Ac @ Ac.T


def _check_against_dense(res, X, dtype_name, m, xp, factor=10):
    lam, V = to_np(res.eigenvalues), to_np(res.eigenvectors)
    ref = np.linalg.eigvalsh(X)[::-1]
    assert V.shape == (X.shape[0], m) and lam.shape == (m,)
    assert np.all(np.diff(lam) <= 0) and np.all(lam >= 0)
    scale = max(ref[0], np.finfo(float).tiny)
    assert np.all(np.abs(lam - ref[:m]) <= RTOL[dtype_name] * scale * factor)
    assert_orthonormal(V, dtype_name)
    assert_backend(res.eigenvalues, xp, dtype_name)
    assert_backend(res.eigenvectors, xp, dtype_name)
    return lam, V


@pytest.mark.parametrize(("d", "r", "n"), WIDE_CASES)
def test_eigh_update_wide_increment_matches_dense_eigh(xp, dtype_name, d, r, n):
    rng = np.random.default_rng(20 + d + r + n)
    Q, L = random_basis(rng, d, r), np.sort(rng.gamma(2.0, size=r))[::-1]
    A = rng.standard_normal((d, n)) / np.sqrt(n)
    res = eigh_update(*(asarray(xp, a, dtype_name) for a in (L, Q, A)), decay=0.9, weight=0.3)
    X = _dense_update(L, Q, A, 0.9, 0.3, dtype_name)
    lam, V = _check_against_dense(res, X, dtype_name, min(d, r + n), xp)
    assert_matrix_close(V * lam @ V.T, X, dtype_name, factor=10)
    # The basis itself, signs included: eigenvector errors are ~ eps |X| / gap, and the gaps of
    # these random spectra (down to the zero eigenvalues beyond r + n) are far from zero.
    w, U = np.linalg.eigh(X)
    w, U = w[::-1], U[:, ::-1]
    m = lam.shape[0]
    gap = np.min(-np.diff(w[: min(d, m + 1)])) / w[0]
    assert gap > 1e-3
    np.testing.assert_allclose(V, reference_flip(U[:, :m]), atol=10 * RTOL[dtype_name] / gap)


@pytest.mark.parametrize("k", [1, 5, 12])
def test_eigh_update_wide_increment_rank_keeps_best_rank_k(xp, dtype_name, k):
    rng = np.random.default_rng(21)
    d, r, n = 12, 6, 50
    Q, L = random_basis(rng, d, r), np.linspace(6.0, 1.0, r)
    A = rng.standard_normal((d, n)) / np.sqrt(n)
    res = eigh_update(*(asarray(xp, a, dtype_name) for a in (L, Q, A)), decay=0.95, weight=0.05, rank=k)
    X = _dense_update(L, Q, A, 0.95, 0.05, dtype_name)
    lam, V = _check_against_dense(res, X, dtype_name, k, xp)
    w, U = np.linalg.eigh(X)
    best = (U[:, ::-1][:, :k] * w[::-1][:k]) @ U[:, ::-1][:, :k].T
    assert_matrix_close(V * lam @ V.T, best, dtype_name, factor=10)


@given(d=st.integers(1, 24), data=st.data())
def test_eigh_update_wide_increments_match_dense_eigh(xp, dtype_name, d, data):
    """Hypothesis over the dense regime: r + n >= 3d/4, n up to 4d, adversarial columns."""
    r = data.draw(st.integers(0, d), label="r")
    n = data.draw(st.integers(max(1, -(-3 * d // 4) - r), 4 * d + 2), label="n")
    structure = data.draw(st.sampled_from(STRUCTURES), label="structure")
    decay = data.draw(st.sampled_from([1.0, 0.95, 0.3]), label="decay")
    weight = data.draw(st.sampled_from([1.0, 0.05, 2.0]), label="weight")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    Q = random_basis(rng, d, r)
    L = np.sort(rng.gamma(2.0, size=r))[::-1]
    A = increment_block(rng, Q, n, structure)
    res = eigh_update(*(asarray(xp, a, dtype_name) for a in (L, Q, A)), decay=decay, weight=weight)
    X = _dense_update(L, Q, A, decay, weight, dtype_name)
    lam, V = _check_against_dense(res, X, dtype_name, min(d, r + n), xp)
    assert_matrix_close(V * lam @ V.T, X, dtype_name, factor=10)


@pytest.mark.parametrize(("d", "r", "n"), [(20, 6, 9), (20, 8, 12), (16, 4, 12), (30, 10, 13)])
def test_dense_and_brand_forms_agree_where_both_apply(xp, dtype_name, d, r, n):
    """Around the switch (r + n from 3d/4 to d) both forms give the same decomposition."""
    from lowrank_online.brand import _brand_eigh_update, _dense_eigh_update

    rng = np.random.default_rng(22)
    Q, L = random_basis(rng, d, r), np.sort(rng.gamma(2.0, size=r))[::-1]
    A = rng.standard_normal((d, n))
    args = [asarray(xp, a, dtype_name) for a in (L, Q, A)]
    be = _backend.backend_of(args[1], xp)
    dense = _dense_eigh_update(*args, 0.9, 0.2, None, be, True)
    brand = _brand_eigh_update(*args, 0.9, 0.2, None, be, True)
    assert dense.eigenvectors.shape == brand.eigenvectors.shape == (d, min(d, r + n))
    w = np.linalg.eigvalsh(_dense_update(L, Q, A, 0.9, 0.2, dtype_name))[::-1]
    m = min(d, r + n)
    gap = np.min(-np.diff(w[: min(d, m + 1)])) / w[0]
    assert gap > 1e-3
    np.testing.assert_allclose(to_np(dense.eigenvalues), to_np(brand.eigenvalues), atol=10 * RTOL[dtype_name] * w[0])
    np.testing.assert_allclose(to_np(dense.eigenvectors), to_np(brand.eigenvectors), atol=10 * RTOL[dtype_name] / gap)


@pytest.mark.parametrize(
    ("dtype_name", "scale"),
    [("float32", 1e20), ("float32", 1e-25), ("float64", 1e150), ("float64", 1e-150)],
)
def test_eigh_update_wide_increment_of_extreme_scale_is_exact(xp, dtype_name, scale):
    """A A^T over- or underflows the dtype while weight * A A^T does not: the power-of-two
    scale of the Gram matrix keeps every digit (float32 needs no float64 retry)."""
    rng = np.random.default_rng(23)
    d, r, n = 10, 4, 300
    Q, L = random_basis(rng, d, r), np.linspace(3.0, 1.0, r)
    A0 = rng.standard_normal((d, n)) / np.sqrt(n)
    weight = 0.5 / scale / scale
    res = eigh_update(*(asarray(xp, a, dtype_name) for a in (L, Q, A0 * scale)), decay=0.5, weight=weight)
    A = _cast(A0 * scale, dtype_name) / scale  # the values the backend sees, back at scale 1
    X = 0.5 * (_cast(Q, dtype_name) * _cast(L, dtype_name)) @ _cast(Q, dtype_name).T + 0.5 * A @ A.T
    lam, V = _check_against_dense(res, X, dtype_name, d, xp)
    assert_matrix_close(V * lam @ V.T, X, dtype_name, factor=10)


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_scaled_gram_is_exact_at_every_scale(dtype_name):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(24)
    A0 = rng.standard_normal((7, 50))
    info = np.finfo(np.dtype(dtype_name))
    be = _backend.backend(xp, "cpu", np.dtype(dtype_name))
    for exponent in (0, info.maxexp - 3, info.minexp + 3, info.minexp - info.nmant + 8):
        A = np.ldexp(A0, exponent).astype(dtype_name)  # a power of two, then rounded once
        G, e = _linalg.scaled_gram(xp.asarray(A), be)  # no over- or underflow warning either
        Ar = np.ldexp(A.astype(np.float64), -exponent)  # the same values at scale 1, in float64
        assert G.dtype == np.float64
        assert_matrix_close(np.ldexp(np.asarray(G), 2 * (e - exponent)), Ar @ Ar.T, dtype_name)
        assert (e == 0) == (exponent == 0)
    for bad in (np.nan, np.inf):
        A = A0.astype(dtype_name)
        A[3, 4] = bad
        with pytest.raises(FloatingPointError, match="non-finite"):
            _linalg.scaled_gram(xp.asarray(A), be)


def test_eigh_update_wide_increment_names_a_non_finite_argument(xp):
    rng = np.random.default_rng(25)
    Q, A = random_basis(rng, 6, 2), rng.standard_normal((6, 30))
    A[2, 7] = np.nan
    with pytest.raises(ValueError, match="`A` contains NaN or infinity"):
        eigh_update(asarray(xp, [2.0, 1.0]), asarray(xp, Q), asarray(xp, A))
    with pytest.raises(DecompositionError, match="Brand update failed"):
        eigh_update(asarray(xp, [2.0, 1.0]), asarray(xp, Q), asarray(xp, A), check_finite=False)


@pytest.mark.parametrize("scaled", [False, True])
def test_eigh_update_never_allocates_an_n_by_n_matrix(scaled):
    """The issue's convolution layer: d = 145, n = 4096 (an n x n float64 array is 134 MB)."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(26)
    d, r, n = 145, 64, 4096
    Q, A = random_basis(rng, d, r), rng.standard_normal((d, n))
    # scaled: A A^T would overflow float64, so the Gram matrix is formed from a copy 2^-e A
    A, weight = (A * 1e160, 1e-300) if scaled else (A, 0.05)
    L, Q, A = xp.asarray(np.linspace(2, 1, r)), xp.asarray(Q), xp.asarray(A)
    tracemalloc.start()
    res = eigh_update(L, Q, A, decay=0.95, weight=weight)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.eigenvectors.shape == (d, d)
    # d x d products and at most one scaled copy of A (d n 8 bytes = 4.75 MB)
    assert peak < 2 * d * n * 8, f"peak {peak / 1e6:.1f} MB"


def test_eigh_update_wide_float32_update_beyond_float32_raises():
    """The float64 retry cannot help when the updated eigenvalues themselves exceed float32."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(27)
    A = (1e20 * rng.standard_normal((6, 40))).astype(np.float32)  # A A^T ~ 4e41
    Q, L = np.zeros((6, 0), np.float32), np.zeros(0, np.float32)
    with np.errstate(over="ignore"), pytest.raises(DecompositionError, match="overflow float32"):
        eigh_update(xp.asarray(L), xp.asarray(Q), xp.asarray(A))  # NumPy warns on the cast
    res = eigh_update(xp.asarray(L), xp.asarray(Q), xp.asarray(A), weight=1e-30)  # representable
    ref = np.linalg.eigvalsh(1e-30 * A.astype(float) @ A.T.astype(float))[::-1]
    np.testing.assert_allclose(np.asarray(res.eigenvalues, float), ref, rtol=1e-5)
