"""NystromSketch against dense float64 NumPy references of the streamed matrix."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import asarray, assert_backend, assert_orthonormal, reference_flip, to_np
from hypothesis import given
from hypothesis import strategies as st

from lowrank_online import LowRankEMA, NystromSketch

# float32: the sketch sums float32 products over the stream, and Nystrom divides by its core.
TOL = {"float64": 1e-9, "float32": 5e-4}


def _stream(rng, d, batches, n, rank=None):
    """Batches whose Gram matrices add up to a matrix of rank ``rank`` (full when None)."""
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0] if rank else None
    out = []
    for _ in range(batches):
        A = rng.standard_normal((d if rank is None else rank, n))
        out.append(A if rank is None else basis @ A)
    return out


def _dense(batches, decay=None):
    M = batches[0] @ batches[0].T
    for A in batches[1:]:
        M = M + A @ A.T if decay is None else decay * M + (1 - decay) * A @ A.T
    return M


@pytest.mark.parametrize("decay", [None, 0.9])
def test_sketch_is_exact_when_the_stream_has_rank_at_most_the_sketch(xp, dtype_name, decay):
    rng = np.random.default_rng(0)
    batches = _stream(rng, 120, 6, 4, rank=7)
    sk = NystromSketch(120, rank=5, sketch_size=10, decay=decay, seed=1)
    for A in batches:
        sk.update(asarray(xp, A, dtype_name))
    assert sk.n_updates == 6
    res = sk.eigh()
    w, V = np.linalg.eigh(_dense(batches, decay))
    w, V = w[::-1], V[:, ::-1]
    np.testing.assert_allclose(to_np(res.eigenvalues), w[:5], rtol=TOL[dtype_name])
    assert_orthonormal(res.eigenvectors, dtype_name)
    np.testing.assert_allclose(to_np(res.eigenvectors), reference_flip(V[:, :5]), atol=100 * TOL[dtype_name])
    assert_backend(res.eigenvalues, xp, dtype_name)
    assert_backend(res.eigenvectors, xp, dtype_name)


def test_sketch_with_decay_follows_lowrank_ema_convention():
    """The first batch enters unscaled, later ones with weight 1 - rho: the matrix LowRankEMA
    tracks (its eigenvalues agree when both are exact)."""
    rng = np.random.default_rng(1)
    batches = _stream(rng, 80, 5, 2, rank=6)
    sk, ema = NystromSketch(80, rank=4, sketch_size=12, decay=0.8, seed=0), LowRankEMA(rank=20, decay=0.8)
    for A in batches:
        sk.update(A)
        ema.update(A)
    np.testing.assert_allclose(sk.eigh().eigenvalues, ema.eigenvalues[:4], rtol=1e-10)


def test_sketch_of_a_full_rank_stream_is_within_the_expected_error_bound():
    """Tropp et al. 2017, Thm. 4.1: E |M - M_r|_F <= (1 + r / (k - r - 1)) |M - [M]_r|_F
    (here checked on the mean over seeds, with 20% slack for the sampling)."""
    rng = np.random.default_rng(2)
    d, r, k = 200, 10, 25
    scales = 0.85 ** np.arange(d)
    batches = [scales[:, None] * A for A in _stream(rng, d, 8, 16)]
    M = _dense(batches)
    w = np.linalg.eigvalsh(M)[::-1]
    best = np.sqrt(np.sum(w[r:] ** 2))
    errs = []
    for seed in range(8):
        sk = NystromSketch(d, rank=r, sketch_size=k, seed=seed)
        for A in batches:
            sk.update(A)
        lam, V = sk.eigh()
        errs.append(np.linalg.norm(M - (V * lam) @ V.T))
        assert np.all(np.diff(lam) <= 0) and np.all(lam <= w[:r] * (1 + 1e-10))
    assert np.mean(errs) <= 1.2 * (1 + r / (k - r - 1)) * best, (np.mean(errs) / best)


def test_sketch_same_seed_same_result_on_every_backend(xp):
    rng = np.random.default_rng(3)
    batches = [0.9 ** np.arange(60)[:, None] * A for A in _stream(rng, 60, 3, 5)]
    ref, sk = NystromSketch(60, 4, seed=7), NystromSketch(60, 4, seed=7)
    for A in batches:
        ref.update(A)
        sk.update(asarray(xp, A))
    np.testing.assert_allclose(to_np(sk.eigh().eigenvalues), ref.eigh().eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(to_np(sk.eigh().eigenvectors), ref.eigh().eigenvectors, atol=1e-10)


def test_sketch_of_zero_and_of_a_vector():
    sk = NystromSketch(30, rank=3, seed=0)
    sk.update(np.zeros((30, 2)))
    lam, V = sk.eigh()
    assert np.all(lam == 0.0)
    assert_orthonormal(V, "float64")
    a = np.zeros(30)
    a[4] = 2.0
    sk.update(a)  # a vector is a one-column batch
    lam, V = sk.eigh()
    np.testing.assert_allclose(lam, [4.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(V[4, 0]), 1.0)
    assert_orthonormal(V, "float64")


def test_state_dict_round_trip_is_bit_exact():
    rng = np.random.default_rng(4)
    batches = _stream(rng, 50, 4, 3)
    sk = NystromSketch(50, 3, decay=0.7, seed=0)
    for A in batches[:2]:
        sk.update(A)
    back = NystromSketch.from_state_dict(
        {k: np.array(v) if hasattr(v, "shape") else v for k, v in sk.state_dict().items()}
    )
    for A in batches[2:]:
        sk.update(A)
        back.update(A)
    assert back.n_updates == sk.n_updates == 4
    np.testing.assert_array_equal(back.eigh().eigenvectors, sk.eigh().eigenvectors)
    empty = NystromSketch.from_state_dict(NystromSketch(5, 2).state_dict())
    assert empty.n_updates == 0 and repr(empty).startswith("NystromSketch(d=5")


@given(d=st.integers(5, 60), rank=st.integers(1, 5), extra=st.integers(0, 6), n=st.integers(1, 8),
       batches=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_sketch_eigenpairs_are_exact_below_the_sketch_size(d, rank, extra, n, batches, seed):
    rng = np.random.default_rng(seed)
    k = min(d, rank + extra)
    rank = min(rank, k)
    true_rank = max(1, min(k, n * batches))
    stream = _stream(rng, d, batches, n, rank=true_rank) if true_rank < d else _stream(rng, d, batches, n)
    sk = NystromSketch(d, rank, sketch_size=k, seed=seed)
    for A in stream:
        sk.update(A)
    lam, V = sk.eigh()
    w = np.linalg.eigvalsh(_dense(stream))[::-1]
    np.testing.assert_allclose(lam, np.clip(w[:rank], 0, None), atol=1e-8 * w[0], rtol=1e-7)
    assert_orthonormal(V, "float64")


@pytest.mark.parametrize(
    ("make", "call", "error", "match"),
    [
        (lambda: NystromSketch(0, 1), None, ValueError, "`d` must be an integer"),
        (lambda: NystromSketch(10, 0), None, ValueError, "`rank` must be an integer"),
        (lambda: NystromSketch(10, 5, sketch_size=4), None, ValueError, "`sketch_size` must be an integer in"),
        (lambda: NystromSketch(10, 2, decay=1.5), None, ValueError, "`decay` must lie in"),
        (lambda: NystromSketch(10, 2, seed="x"), None, TypeError, "`seed` must be None"),
        (lambda: NystromSketch(10, 2), lambda sk: sk.update(np.ones((9, 2))), ValueError, "`A` has 9 rows"),
        (lambda: NystromSketch(10, 2), lambda sk: sk.update(np.ones((10, 2, 1))), ValueError, "`A` must be 1-D or 2-D"),
        (lambda: NystromSketch(10, 2), lambda sk: sk.update(np.full((10, 2), np.nan)), ValueError, "`A` contains NaN"),
        (lambda: NystromSketch(10, 2), lambda sk: sk.update([[1.0]] * 10), TypeError, "`A` must be an array"),
        (lambda: NystromSketch(10, 2), lambda sk: sk.eigh(), ValueError, r"eigh\(\) needs a sketch"),
        (
            lambda: NystromSketch(10, 2),
            lambda sk: (sk.update(np.ones((10, 1))), sk.update(np.ones((10, 1), np.float32))),
            TypeError,
            "`A` has dtype float32 but the sketch holds float64",
        ),
        (
            lambda: NystromSketch(10, 2),
            lambda sk: (sk.update(np.ones((10, 1))), sk.eigh(rank=9)),
            ValueError,
            "`rank` must be an integer in",
        ),
    ],
)
def test_sketch_rejects_bad_input_and_keeps_its_state(make, call, error, match):
    if call is None:
        with pytest.raises(error, match=match):
            make()
        return
    sk = make()
    before = sk.n_updates
    with pytest.raises(error, match=match):
        call(sk)
    assert sk.n_updates <= before + 1  # a rejected batch is not counted
