"""kron_rearrange / nearest_kron against the defining identity and a block-by-block reference."""

from __future__ import annotations

import numpy as np
import pytest
from _fisher_data import dense_fisher, mlp_statistics, random_statistics, rearrange_loops
from _helpers import asarray, assert_backend, assert_matrix_close, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import KronSum, kron_rearrange, nearest_kron

shapes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))


@given(dims=shapes, seed=st.integers(0, 2**32 - 1))
def test_rearrangement_satisfies_the_defining_identity(xp, dims, seed):
    """|M - L ⊗ R|_F = |R(M) - vec(L) vec(R)^T|_F for arbitrary M, L, R (np.kron reference)."""
    m1, n1, m2, n2 = dims
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m1 * m2, n1 * n2))
    L, R = rng.standard_normal((m1, n1)), rng.standard_normal((m2, n2))
    RM = to_np(kron_rearrange(asarray(xp, M), (m1, n1), (m2, n2)))
    lhs = np.linalg.norm(M - np.kron(L, R))
    rhs = np.linalg.norm(RM - np.outer(L.reshape(-1), R.reshape(-1)))
    assert abs(lhs - rhs) <= 1e-12 * lhs
    # a Kronecker product rearranges to exactly the rank-one outer product of the vecs
    K = to_np(kron_rearrange(asarray(xp, np.kron(L, R)), (m1, n1), (m2, n2)))
    np.testing.assert_array_equal(K, np.outer(L.reshape(-1), R.reshape(-1)))
    np.testing.assert_array_equal(RM, rearrange_loops(M, (m1, n1), (m2, n2)))


def test_rearrangement_is_a_permutation_in_the_input_dtype(xp, dtype_name):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((12, 20))
    out = kron_rearrange(asarray(xp, M, dtype_name), (3, 4), (4, 5))
    assert tuple(out.shape) == (12, 20)
    assert_backend(out, xp, dtype_name)
    np.testing.assert_array_equal(np.sort(to_np(out).ravel()), np.sort(M.astype(dtype_name).astype(float).ravel()))


@given(dims=shapes, terms=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_nearest_kron_error_is_the_svd_tail_of_the_rearrangement(dims, terms, seed):
    import array_api_compat.numpy as xp

    m1, n1, m2, n2 = dims
    terms = min(terms, m1 * n1, m2 * n2)
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m1 * m2, n1 * n2))
    ks = nearest_kron(xp.asarray(M), (m1, n1), (m2, n2), terms=terms)
    s = np.linalg.svd(rearrange_loops(M, (m1, n1), (m2, n2)), compute_uv=False)
    err = np.linalg.norm(M - ks.to_dense())
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[terms:] ** 2)), atol=1e-12 * np.linalg.norm(M))
    # and the dense sum equals the sum of np.kron of the returned factors
    ref = sum(np.kron(L, R) for L, R in zip(ks.left, ks.right, strict=True))
    np.testing.assert_allclose(ks.to_dense(), ref, atol=1e-14 * np.linalg.norm(M))


def test_nearest_kron_recovers_an_exact_kronecker_sum(xp, dtype_name):
    rng = np.random.default_rng(3)
    pairs = [(rng.standard_normal((3, 2)), rng.standard_normal((4, 5))) for _ in range(2)]
    M = sum(np.kron(L, R) for L, R in pairs)
    ks = nearest_kron(asarray(xp, M, dtype_name), (3, 2), (4, 5), terms=2)
    assert ks.n_terms == 2 and ks.left_shape == (3, 2) and ks.right_shape == (4, 5)
    assert_matrix_close(to_np(ks.to_dense()), M, dtype_name, factor=100)
    for L, R in zip(ks.left, ks.right, strict=True):
        assert_backend(L, xp, dtype_name)
        assert_backend(R, xp, dtype_name)


@pytest.mark.parametrize("data", ["mlp", "random"])
def test_nearest_kron_of_a_fisher_block_has_psd_symmetric_first_term(data):
    import array_api_compat.numpy as xp

    a, g = mlp_statistics() if data == "mlp" else random_statistics(40, 6, 4)
    F = dense_fisher(a, g)
    d_a, d_g = a.shape[1], g.shape[1]
    ks = nearest_kron(xp.asarray(F), (d_g, d_g), (d_a, d_a), terms=2)
    for M in ks.left + ks.right:
        np.testing.assert_allclose(M, M.T, atol=1e-13 * np.abs(M).max())
    for M in (ks.left[0], ks.right[0]):
        w = np.linalg.eigvalsh(M)
        assert w.min() >= -1e-12 * w.max()


def test_kron_sum_matvec_and_to_dense_match_numpy_kron(xp, dtype_name):
    rng = np.random.default_rng(4)
    Ls = [rng.standard_normal((3, 2)) for _ in range(2)]
    Rs = [rng.standard_normal((4, 5)) for _ in range(2)]
    ks = KronSum(tuple(asarray(xp, L, dtype_name) for L in Ls), tuple(asarray(xp, R, dtype_name) for R in Rs))
    M = np.kron(Ls[0], Rs[0]) + np.kron(Ls[1], Rs[1])
    assert ks.shape == (12, 10)
    assert_matrix_close(to_np(ks.to_dense()), M, dtype_name)
    x = rng.standard_normal(10)
    y = ks.matvec(asarray(xp, x, dtype_name))
    assert tuple(y.shape) == (12,)
    assert_matrix_close(to_np(y), M @ x, dtype_name, factor=10)
    # matrix form, batched: (k, n1, n2) -> (k, m1, m2) with vec(L X R^T) = kron(L, R) vec(X)
    X = rng.standard_normal((3, 2, 5))
    Y = to_np(ks.matvec(asarray(xp, X, dtype_name)))
    for i in range(3):
        assert_matrix_close(Y[i].reshape(-1), M @ X[i].reshape(-1), dtype_name, factor=10)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (((4, 6), (2, 2), (2, 2)), {}, ValueError, "left_shape"),
        (((4, 4), (2, 2), (2, 2)), {"terms": 5}, ValueError, "`terms` must be an integer in"),
        (((4, 4), (2, 2), (2, 2)), {"terms": 0}, ValueError, "`terms`"),
        (((4, 4), (2,), (2, 2)), {}, ValueError, "left_shape"),
        (((4, 4), (2, 2), (0, 2)), {}, ValueError, "right_shape"),
        (((4, 4), (2, 2.5), (2, 2)), {}, TypeError, "left_shape"),
    ],
)
def test_rearrangement_rejects_bad_input(xp, args, kwargs, error, match):
    shape, left, right = args
    M = asarray(xp, np.ones(shape))
    with pytest.raises(error, match=match):
        nearest_kron(M, left, right, **kwargs)
    if "terms" not in kwargs:
        with pytest.raises(error, match=match):
            kron_rearrange(M, left, right)


def test_rearrangement_rejects_non_finite_and_non_arrays(xp):
    M = np.ones((4, 4))
    M[1, 2] = np.nan
    with pytest.raises(ValueError, match="`M` contains NaN"):
        kron_rearrange(asarray(xp, M), (2, 2), (2, 2))
    with pytest.raises(TypeError, match="`M` must be an array"):
        nearest_kron([[1.0]], (1, 1), (1, 1))
