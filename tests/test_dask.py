"""The online core on Dask arrays, on a real ``dask.distributed.LocalCluster`` (2 processes).

Every result is compared with the NumPy result of the same call (itself checked against dense
references in the other test files) at the tolerances of ``_helpers.py``; results must come
back as Dask arrays chunked like the inputs. Also: orthonormality over a long stream, a bounded
task graph and bounded worker memory over 1,000 updates, checkpoint / ``client.restart()`` /
resume, and the bad inputs of issue 7.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import array_api_compat.dask.array as dxp  # noqa: E402
from _helpers import (  # noqa: E402
    assert_matrix_close,
    assert_orthonormal,
    increment_block,
    measure,
    random_basis,
    to_np,
)

from lowrank_online import (  # noqa: E402
    DecompositionError,
    LowRankEMA,
    NystromSketch,
    damped_solve,
    eigh_update,
    load_state,
    reigh,
    rsvd,
    save_state,
    svd_update,
)

CHUNK = 96  # rows per block: several blocks, and a ragged last one

# The probes benchmarks/bench_dask.py reports the stream footprint with (benchmarks/_measure.py,
# not installed): this test bounds the same figures.
scheduler_tasks, worker_memory = measure.scheduler_tasks, measure.worker_memory


# The ``client`` fixture (a LocalCluster of 2 worker processes, 1 thread each) lives in
# conftest.py: test_pca.py runs its Dask tests on the same cluster.


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _dask(x, chunk=CHUNK):
    """A NumPy array on the cluster: tall arrays chunked by rows, vectors in one chunk."""
    x = np.asarray(x)
    arr = da.from_array(x, chunks=(chunk, -1) if x.ndim == 2 else -1)
    return arr.persist()



def _is_dask(x, chunks=None):
    assert isinstance(x, da.Array), type(x)
    if chunks is not None:
        assert x.chunks[0] == chunks, (x.chunks, chunks)
        if x.ndim == 2:
            assert len(x.chunks[1]) == 1
    return to_np(x.compute())


def _close(actual, expected, dtype_name, factor=1.0):
    assert_matrix_close(actual, np.asarray(expected, float), dtype_name, factor=factor)


# --------------------------------------------------------------------------------------------
# every function equals its NumPy result
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("structure", ["generic", "duplicate", "zero", "in_span", "scaled"])
def test_eigh_update_on_dask_equals_numpy(client, dtype_name, structure):
    rng = np.random.default_rng(1)
    d, r, n = 500, 12, 6
    dt = np.dtype(dtype_name)
    Q = random_basis(rng, d, r).astype(dt)
    L = np.sort(rng.gamma(2.0, size=r))[::-1].astype(dt)
    A = increment_block(rng, Q.astype(float), n, structure, scale_range=(-6.0, 6.0)).astype(dt)
    ref = eigh_update(L, Q, A, decay=0.9, weight=0.3)
    res = eigh_update(_dask(L), _dask(Q), _dask(A), decay=0.9, weight=0.3)
    V = _is_dask(res.eigenvectors, _dask(Q).chunks[0])
    lam = _is_dask(res.eigenvalues)
    assert res.eigenvectors.dtype == dt and res.eigenvalues.dtype == dt
    assert V.shape == ref.eigenvectors.shape
    _close(lam, ref.eigenvalues, dtype_name)
    _close(V * lam @ V.T, (to_np(ref.eigenvectors) * to_np(ref.eigenvalues)) @ to_np(ref.eigenvectors).T, dtype_name)
    assert_orthonormal(V, dtype_name)
    if structure == "generic":  # a well separated spectrum: the basis itself, signs included
        _close(V, ref.eigenvectors, dtype_name, factor=100)


def test_eigh_update_on_dask_first_update_rank_and_vector(client):
    rng = np.random.default_rng(2)
    d = 300
    A = rng.standard_normal((d, 5))
    empty_q, empty_l = np.zeros((d, 0)), np.zeros(0)
    ref = eigh_update(empty_l, empty_q, A, rank=3)
    res = eigh_update(da.zeros(0, chunks=-1), _dask(empty_q), _dask(A), rank=3)
    _close(_is_dask(res.eigenvectors, _dask(A).chunks[0]), ref.eigenvectors, "float64")
    a = rng.standard_normal(d)
    ref = eigh_update(ref.eigenvalues, ref.eigenvectors, a)
    res = eigh_update(res.eigenvalues, res.eigenvectors, _dask(a[:, None])[:, 0])
    _close(_is_dask(res.eigenvalues), ref.eigenvalues, "float64")
    _close(_is_dask(res.eigenvectors), ref.eigenvectors, "float64")
    # zero weight: only the decay, no pass over A
    res0 = eigh_update(res.eigenvalues, res.eigenvectors, _dask(A), weight=0.0, decay=0.5, rank=2)
    _close(_is_dask(res0.eigenvalues), 0.5 * to_np(ref.eigenvalues)[:2], "float64")


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_svd_update_on_dask_equals_numpy(client, dtype_name):
    rng = np.random.default_rng(3)
    m, d, r, n = 400, 350, 8, 5
    dt = np.dtype(dtype_name)
    U, V = random_basis(rng, m, r).astype(dt), random_basis(rng, d, r).astype(dt)
    S = np.sort(rng.gamma(2.0, size=r))[::-1].astype(dt)
    A, B = rng.standard_normal((m, n)).astype(dt), rng.standard_normal((d, n)).astype(dt)
    ref = svd_update(U, S, V.T, A, B, rank=10)
    Vh = da.from_array(V.T.copy(), chunks=(-1, CHUNK)).persist()
    res = svd_update(_dask(U), _dask(S), Vh, _dask(A), _dask(B), rank=10)
    _close(_is_dask(res.U, _dask(U).chunks[0]), ref.U, dtype_name, factor=10)
    _close(_is_dask(res.S), ref.S, dtype_name)
    assert isinstance(res.Vh, da.Array) and res.Vh.chunks[1] == Vh.chunks[1] and len(res.Vh.chunks[0]) == 1
    _close(to_np(res.Vh.compute()), ref.Vh, dtype_name, factor=10)


@pytest.mark.parametrize("shape", [(600, 40), (30, 300)], ids=["tall", "wide-dense-fallback"])
def test_rsvd_on_dask_equals_numpy_for_the_same_seed(client, shape):
    rng = np.random.default_rng(4)
    X = rng.standard_normal(shape) * 0.8 ** np.arange(shape[1])[None, :]
    ref = rsvd(X, 5, seed=7)
    res = rsvd(_dask(X), 5, seed=7)
    _close(_is_dask(res.U, _dask(X).chunks[0]), ref.U, "float64")
    _close(_is_dask(res.S), ref.S, "float64")
    _close(to_np(res.Vh.compute()), ref.Vh, "float64")


def test_rsvd_dense_fallback_on_tall_dask_array(client):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 12))
    ref = rsvd(X, 4, seed=0)  # k = 12 >= 0.8 min(m, n): dense path (tall-skinny QR on Dask)
    res = rsvd(_dask(X), 4, seed=0)
    _close(_is_dask(res.U, _dask(X).chunks[0]), ref.U, "float64")
    _close(_is_dask(res.S), ref.S, "float64")


@pytest.mark.parametrize("case", ["nystrom", "rank-deficient", "dense-fallback"])
def test_reigh_on_dask_equals_numpy_for_the_same_seed(client, case):
    rng = np.random.default_rng(6)
    d = 24 if case == "dense-fallback" else 400
    width = 3 if case == "rank-deficient" else 60
    B = rng.standard_normal((d, width)) * 0.9 ** np.arange(width)
    X = B @ B.T
    ref = reigh(X, 6, seed=11)
    res = reigh(_dask(X), 6, seed=11)
    lam = _is_dask(res.eigenvalues)
    V = _is_dask(res.eigenvectors, _dask(X).chunks[0])
    _close(lam, ref.eigenvalues, "float64")
    _close(V * lam @ V.T, (to_np(ref.eigenvectors) * to_np(ref.eigenvalues)) @ to_np(ref.eigenvectors).T, "float64")
    assert_orthonormal(V, "float64")


@pytest.mark.parametrize("method", ["block_krylov", "subspace"])
def test_randomized_error_estimate_and_tol_on_dask_equal_numpy(client, method):
    """The estimate's products stay on the workers; its numbers, the residuals and the depth
    that tol chose are NumPy's."""
    rng = np.random.default_rng(16)
    B = rng.standard_normal((400, 80)) * 0.9 ** np.arange(80)
    X = B @ B.T
    kw = {"tol": 1e-8} if method == "block_krylov" else {"estimate_error": True}
    for fn in (rsvd, reigh):
        ref = fn(X, 6, method=method, seed=3, **kw)
        res = fn(_dask(X), 6, method=method, seed=3, **kw)
        vals = res.S if fn is rsvd else res.eigenvalues
        want = ref.eigenvalues if fn is reigh else ref.S
        _close(_is_dask(vals), want, "float64")
        _is_dask(res[0] if fn is rsvd else res.eigenvectors, _dask(X).chunks[0])
        # residuals near the rounding level of X: compared on X's scale
        np.testing.assert_allclose(_is_dask(res.error.residuals), to_np(ref.error.residuals), rtol=1e-6,
                                   atol=1e-12 * float(want[0]))
        assert res.error.frobenius == pytest.approx(ref.error.frobenius, rel=1e-8)
        assert (res.error.iterations, res.error.n_products, res.error.converged) == (
            ref.error.iterations, ref.error.n_products, ref.error.converged)


def test_nystrom_sketch_on_dask_equals_numpy(client):
    rng = np.random.default_rng(17)
    batches = [rng.standard_normal((300, 4)) * 0.9 ** np.arange(300)[:, None] for _ in range(4)]
    ref, res = NystromSketch(300, 5, decay=0.9, seed=2), NystromSketch(300, 5, decay=0.9, seed=2)
    for A in batches:
        ref.update(A)
        res.update(_dask(A))
    out, want = res.eigh(), ref.eigh()
    _close(_is_dask(out.eigenvalues), want.eigenvalues, "float64")
    _close(_is_dask(out.eigenvectors, _dask(batches[0]).chunks[0]), want.eigenvectors, "float64", factor=1e3)


@pytest.mark.parametrize("continuation", [False, True])
def test_damped_solve_on_dask_equals_numpy(client, continuation):
    rng = np.random.default_rng(7)
    d, r = 500, 9
    Q, L = random_basis(rng, d, r), np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    X = rng.standard_normal((d, 4))
    ref = damped_solve(L, Q, X, 0.3, continuation=continuation)
    res = damped_solve(_dask(L), _dask(Q), _dask(X), 0.3, continuation=continuation)
    _close(_is_dask(res, _dask(X).chunks[0]), ref, "float64")
    ref1 = damped_solve(L, Q, X[:, 0], 0.3)
    res1 = damped_solve(_dask(L), _dask(Q), _dask(X)[:, 0], 0.3)
    assert res1.ndim == 1
    _close(to_np(res1.compute()), ref1, "float64")
    # the kernel's right-hand layout (X M^{-1}, X: k x d) falls back to the row-chunked one
    from lowrank_online import _array
    from lowrank_online.solve import _damped_solve
    dxp = _array.namespace(("X", _dask(X)))
    rows = _damped_solve(_dask(L), _dask(Q), _dask(X).T, 0.3, continuation, dxp, rows=True, overwrite_x=True)
    _close(to_np(rows.compute()), ref.T, "float64")


def test_low_rank_ema_on_dask_equals_numpy(client):
    rng = np.random.default_rng(8)
    d, r, n = 500, 6, 3
    root = rng.standard_normal((d, 12)) * 0.8 ** np.arange(12)
    ref, ema = LowRankEMA(r, 0.9, reorthonormalize_every=5), LowRankEMA(r, 0.9, reorthonormalize_every=5)
    for _ in range(12):
        A = root @ rng.standard_normal((12, n)) + 0.05 * rng.standard_normal((d, n))
        ref.update(A)
        ema.update(_dask(A))
    assert ema.n_updates == ref.n_updates
    _close(_is_dask(ema.eigenvalues), ref.eigenvalues, "float64")
    _close(_is_dask(ema.eigenvectors, (CHUNK,) * 5 + (20,)), ref.eigenvectors, "float64", factor=1e3)
    X = rng.standard_normal((d, 2))
    _close(to_np(ema.solve(_dask(X), 0.1).compute()), ref.solve(X, 0.1), "float64", factor=1e3)
    M = root @ root.T
    ref.correct(M, 2, seed=3)
    ema.correct(_dask(M), 2, seed=3)
    _close(_is_dask(ema.eigenvalues), ref.eigenvalues, "float64", factor=1e3)
    ref.refresh(M, seed=4)
    ema.refresh(_dask(M), seed=4)
    _close(_is_dask(ema.eigenvalues), ref.eigenvalues, "float64")
    _close(_is_dask(ema.eigenvectors), ref.eigenvectors, "float64", factor=1e3)


def test_gaussian_draws_on_dask_are_the_numpy_draws(client):
    from lowrank_online import _backend

    rows = (50, 120, 30)
    like = da.zeros((200, 3), chunks=(rows, -1))
    be = _backend.backend_of(like, dxp)
    for dt in (np.float64, np.float32):
        be.dtype = dt
        G = be.normal(np.random.default_rng(123), (200, 7))
        assert G.chunks[0] == rows
        np.testing.assert_array_equal(G.compute(), np.random.default_rng(123).standard_normal((200, 7), dtype=dt))


# --------------------------------------------------------------------------------------------
# long streams: orthonormality, a bounded graph, bounded worker memory
# --------------------------------------------------------------------------------------------
def _settled_scheduler_tasks(client, held, timeout=30.0):
    """The scheduler's task count once it has forgotten what the client released.

    Releasing keys reaches the scheduler asynchronously, so a count read right after an update
    may still include the previous update's records; poll until it is down to the ``held``
    keys (or the timeout passes, and return what is there then).
    """
    deadline = time.monotonic() + timeout
    while True:
        count = client.run_on_scheduler(scheduler_tasks)
        if count <= held or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


@pytest.mark.slow
def test_long_stream_stays_orthonormal_with_a_bounded_graph_and_bounded_worker_memory(client):
    """1,000 updates of a tracker (d = 256 in 2 blocks, rank 4, batches of 2).

    Checked: orthonormality after 200 updates (and at the end); the held factors' graph is
    their blocks, nothing more; once it has processed the releases, the scheduler holds only
    those two blocks at update 100 and at update 1,000 (the lineage is cut every update); the
    managed memory of the workers is that of the held state, and their resident memory grows
    by less than 40 MiB from update 100 to 1,000.
    """
    d, rank, n = 256, 4, 2
    ema = LowRankEMA(rank, 0.9)
    rng = np.random.default_rng(0)
    ref = LowRankEMA(rank, 0.9)
    seen = {}
    for k in range(1, 1001):
        A = rng.standard_normal((d, n))
        if k <= 200:
            ref.update(A)
        ema.update(da.from_array(A, chunks=(d // 2, -1)))
        if k == 200:
            assert_orthonormal(ema.eigenvectors.compute(), "float64")
            _close(ema.eigenvectors.compute(), ref.eigenvectors, "float64", factor=1e3)
        if k in (100, 1000):
            distributed.wait(ema.eigenvectors)
            seen[k] = {
                "graph": len(ema.eigenvectors.__dask_graph__()),
                "tasks": _settled_scheduler_tasks(client, held=2),
                "workers": client.run(worker_memory),
            }
    assert ema.n_updates == 1000
    assert_orthonormal(ema.eigenvectors.compute(), "float64")
    assert seen[100]["graph"] == seen[1000]["graph"] == 2  # the two blocks of the basis
    # a lineage kept alive would hold thousands of records by update 1,000
    assert seen[100]["tasks"] == seen[1000]["tasks"] == 2, seen
    for addr, late in seen[1000]["workers"].items():
        early = seen[100]["workers"][addr]
        assert late["keys"] <= early["keys"] + 2
        assert late["managed"] <= early["managed"] + d * (rank + n) * 8
        assert late["rss"] - early["rss"] < 40 * 2**20, (early, late)


# --------------------------------------------------------------------------------------------
# checkpoint, worker restart, resume
# --------------------------------------------------------------------------------------------
def test_restart_mid_stream_resumes_from_state_dict_with_nothing_lost(client, tmp_path):
    rng = np.random.default_rng(9)
    d, rank, n = 300, 5, 3
    batches = [rng.standard_normal((d, n)) for _ in range(10)]
    ref = LowRankEMA(rank, 0.8)
    for A in batches:
        ref.update(A)

    ema = LowRankEMA(rank, 0.8)
    for A in batches[:6]:
        ema.update(_dask(A))
    path = tmp_path / "ema.npz"
    save_state(path, ema.state_dict())
    client.restart()
    # the held blocks died with the workers: distributed cancels the futures (FutureCancelledError,
    # "lost dependencies", a subclass of concurrent.futures.CancelledError)
    with pytest.raises(concurrent.futures.CancelledError):
        ema.eigenvectors.compute()
    resumed = LowRankEMA.from_state_dict(load_state(path), xp=dxp, chunks=CHUNK)
    assert resumed.n_updates == 6 and resumed.eigenvectors.chunks[0] == _dask(batches[0]).chunks[0]
    for A in batches[6:]:
        resumed.update(_dask(A))
    assert resumed.n_updates == ref.n_updates
    _close(_is_dask(resumed.eigenvalues), ref.eigenvalues, "float64")
    _close(_is_dask(resumed.eigenvectors), ref.eigenvectors, "float64", factor=1e3)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _tracker(rng, d=200, rank=3):
    ema = LowRankEMA(rank, 0.9)
    for _ in range(3):
        ema.update(_dask(rng.standard_normal((d, 2))))
    return ema


def test_tall_argument_chunked_along_its_second_dimension_is_refused(client):
    rng = np.random.default_rng(10)
    Q, L, A = random_basis(rng, 200, 4), np.ones(4), rng.standard_normal((200, 6))
    split = da.from_array(A, chunks=(100, 3))
    with pytest.raises(ValueError, match=r"`A` is chunked along its second dimension.*rechunk"):
        eigh_update(_dask(L), _dask(Q), split)
    with pytest.raises(ValueError, match="`eigenvectors` is chunked along its second dimension"):
        eigh_update(_dask(L), da.from_array(Q, chunks=(100, 2)), _dask(A))
    Vh = da.from_array(Q.T.copy(), chunks=(2, 100))
    with pytest.raises(ValueError, match="`Vh` is chunked along its first dimension"):
        svd_update(_dask(Q), _dask(L), Vh, _dask(A[:, :2]), _dask(A[:, 2:4]))
    with pytest.raises(ValueError, match="`X` is chunked along its second dimension"):
        rsvd(split, 2)
    ema = _tracker(rng)
    before = ema.eigenvectors
    with pytest.raises(ValueError, match="`A` is chunked along its second dimension"):
        ema.update(split)
    assert ema.eigenvectors is before and ema.n_updates == 3


def test_row_chunks_are_aligned_to_the_basis_or_refused_when_unknown(client):
    rng = np.random.default_rng(11)
    Q, L, A = random_basis(rng, 200, 4), np.ones(4), rng.standard_normal((200, 3))
    dQ = da.from_array(Q, chunks=(80, -1)).persist()
    other = da.from_array(A, chunks=(50, -1))  # disagrees, can be aligned: rechunked to dQ's rows
    res = eigh_update(_dask(L), dQ, other)
    assert res.eigenvectors.chunks[0] == dQ.chunks[0]
    _close(res.eigenvectors.compute(), eigh_update(L, Q, A).eigenvectors, "float64")
    unknown = da.from_array(A, chunks=(50, -1))
    unknown = unknown[unknown[:, 0] > -np.inf]  # same rows, but Dask no longer knows the chunk sizes
    with pytest.raises(ValueError, match=r"`A` has unknown chunk sizes.*compute_chunk_sizes"):
        eigh_update(_dask(L), dQ, unknown)
    ema = _tracker(rng)
    before = ema.eigenvalues
    with pytest.raises(ValueError, match="`A` has unknown chunk sizes"):
        ema.update(unknown)
    assert ema.eigenvalues is before and ema.n_updates == 3


def test_numpy_tall_factor_mixed_with_a_dask_one_is_refused(client):
    rng = np.random.default_rng(12)
    Q, L, A = random_basis(rng, 200, 4), np.ones(4), rng.standard_normal((200, 3))
    with pytest.raises(TypeError, match=r"`A` is a numpy array but `eigenvalues` is a dask\.array array"):
        eigh_update(_dask(L), _dask(Q), A)
    with pytest.raises(TypeError, match=r"`eigenvectors` is a numpy array"):
        eigh_update(_dask(L), Q, _dask(A))
    with pytest.raises(TypeError, match="`X` is a numpy array"):
        damped_solve(_dask(L), _dask(Q), A, 1.0)
    ema = _tracker(rng)
    with pytest.raises(TypeError, match="`A` is a numpy array"):
        ema.update(A)
    assert ema.n_updates == 3


def test_reigh_on_dask_refuses_an_asymmetric_matrix_from_its_first_sketch(client):
    """The sketch G^T X G comes back with the final core: no pass over X of its own."""
    B = np.random.default_rng(15).standard_normal((200, 30))
    M = B @ B.T
    reigh(_dask(M), 2, seed=0)
    with pytest.raises(ValueError, match="`X` must be symmetric; .*estimated from the first sketch"):
        reigh(_dask(M + np.triu(np.ones_like(M))), 2, seed=0)


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_non_finite_values_found_on_the_small_core_name_the_argument(client, dtype_name):
    rng = np.random.default_rng(13)
    dt = np.dtype(dtype_name)
    Q, L = random_basis(rng, 200, 4).astype(dt), np.ones(4, dt)
    A = rng.standard_normal((200, 3)).astype(dt)
    A[150, 1] = np.nan
    with pytest.raises(ValueError, match=r"`A` contains NaN or infinity \(found when a small core"):
        eigh_update(_dask(L), _dask(Q), _dask(A))
    Qbad = Q.copy()
    Qbad[3, 0] = np.inf
    with pytest.raises(ValueError, match="`eigenvectors` contains NaN or infinity"):
        eigh_update(_dask(L), _dask(Qbad), _dask(np.nan_to_num(A)))
    with pytest.raises(ValueError, match="`X` contains NaN or infinity"):
        damped_solve(_dask(L), _dask(Q), _dask(A), 1.0)
    with pytest.raises(ValueError, match="`X` contains NaN or infinity"):
        rsvd(_dask(np.hstack([A, rng.standard_normal((200, 30)).astype(dt)])), 2, seed=0)
    B = rng.standard_normal((200, 30)).astype(dt)
    M = B @ B.T
    M[7, 7] = np.inf
    with pytest.raises(ValueError, match="`X` contains NaN or infinity"):
        reigh(_dask(M), 2, seed=0)
    ema = LowRankEMA(3, 0.9)
    ema.update(_dask(np.nan_to_num(A)))
    before = (ema.eigenvalues, ema.eigenvectors, ema.n_updates)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an input error, not a skipped update
        with pytest.raises(ValueError, match="`A` contains NaN or infinity"):
            ema.update(_dask(A))
    assert (ema.eigenvalues, ema.eigenvectors, ema.n_updates) == before
    ema.update(_dask(np.nan_to_num(A)))  # and it carries on
    assert ema.n_updates == 2


def test_check_finite_false_skips_the_check_on_dask(client):
    rng = np.random.default_rng(14)
    Q, L, A = random_basis(rng, 200, 4), np.ones(4), rng.standard_normal((200, 3))
    A[0, 0] = np.nan
    with pytest.raises(DecompositionError):
        eigh_update(_dask(L), _dask(Q), _dask(A), check_finite=False)


# --------------------------------------------------------------------------------------------
# without a cluster: the threaded scheduler (and no distributed client)
# --------------------------------------------------------------------------------------------
def test_threaded_scheduler_without_distributed_client():
    code = textwrap.dedent(
        """
        import numpy as np, dask.array as da
        from lowrank_online import LowRankEMA, eigh_update
        rng = np.random.default_rng(0)
        ref, ema = LowRankEMA(4, 0.9), LowRankEMA(4, 0.9)
        for _ in range(20):
            A = rng.standard_normal((300, 3))
            ref.update(A)
            ema.update(da.from_array(A, chunks=(100, -1)))
        err = np.abs(ema.eigenvectors.compute() - ref.eigenvectors).max()
        assert err < 1e-9, err
        assert len(ema.eigenvectors.__dask_graph__()) == 3, dict(ema.eigenvectors.__dask_graph__())
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]

