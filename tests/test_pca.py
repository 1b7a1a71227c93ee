"""StreamingPCA against scikit-learn's IncrementalPCA and PCA, dense weighted references,
every backend, Dask on the Dask tests' LocalCluster, scikit-learn's estimator checks, bad input,
checkpoints."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from _helpers import RTOL, asarray, assert_backend, assert_matrix_close, assert_orthonormal, to_np

from lowrank_online import DecompositionError, StreamingPCA, load_state, save_state
from lowrank_online.pca import NamespaceMismatchError, _batches

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import PCA, IncrementalPCA  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

ARRAYS = ("components_", "singular_values_", "explained_variance_", "explained_variance_ratio_", "mean_", "var_")


def _data(rng, n, d, *, ratio=0.8, offset=3.0, dtype=np.float64):
    """n samples of d features with principal variances ratio^(2j) along random axes (gaps of
    ~20% between consecutive singular values, so that every component is well defined), off
    centre."""
    R = np.linalg.qr(rng.standard_normal((d, d)))[0]
    Z = rng.standard_normal((n, d)) * ratio ** np.arange(d)
    return (Z @ R.T + offset * rng.standard_normal(d)).astype(dtype)


def _rows(n, size, k):
    return _batches(n, size, k or 0)


def _assert_like(ours, ref, dtype_name, factor=1.0, *, arrays=ARRAYS):
    """Every fitted attribute of ``ours`` equals that of the fitted reference ``ref``."""
    for name in arrays:
        assert_matrix_close(to_np(getattr(ours, name)), np.asarray(getattr(ref, name), float), dtype_name, factor)
    assert ours.n_components_ == ref.n_components_
    seen = getattr(ref, "n_samples_seen_", None) or ref.n_samples_  # PCA: n_samples_
    assert ours.n_samples_seen_ == pytest.approx(float(seen), rel=1e-12)
    scale = float(np.asarray(ref.explained_variance_, float)[0])
    assert abs(float(ours.noise_variance_) - float(ref.noise_variance_)) <= RTOL[dtype_name] * factor * scale


# --------------------------------------------------------------------------------------------
# decay=None is scikit-learn's IncrementalPCA
# --------------------------------------------------------------------------------------------
CASES = [
    # (n_features, batch_size, n_components): n_features < batch, n_features > batch,
    # n_components from 1 to full rank (the first batch's rows when they are fewer), None
    (12, 40, 1), (12, 40, 5), (12, 40, 12),
    (60, 20, 1), (60, 20, 8), (60, 20, 20),
    (30, 7, 3), (30, 100, 10), (30, 25, None),
]


@pytest.mark.parametrize("whiten", [False, True], ids=["plain", "whiten"])
@pytest.mark.parametrize(("d", "batch", "k"), CASES, ids=[f"d{d}-b{b}-k{k}" for d, b, k in CASES])
def test_fit_equals_scikit_learn_incremental_pca(d, batch, k, whiten, dtype_name):
    rng = np.random.default_rng(d * 1000 + batch)
    X = _data(rng, 400, d, dtype=np.dtype(dtype_name))
    ours = StreamingPCA(k, whiten=whiten, batch_size=batch).fit(X)
    ref = IncrementalPCA(k, whiten=whiten, batch_size=batch).fit(X)
    factor = 10.0 if dtype_name == "float32" else 1.0
    _assert_like(ours, ref, dtype_name, factor)
    assert ours.batch_size_ == ref.batch_size_
    assert ours.components_.dtype == X.dtype and ours.transform(X).dtype == X.dtype
    assert_orthonormal(ours.components_.T, dtype_name)
    Y = X[:50]
    assert_matrix_close(ours.transform(Y), ref.transform(Y), dtype_name, factor)
    T = ref.transform(Y)
    assert_matrix_close(ours.inverse_transform(T), ref.inverse_transform(T), dtype_name, factor)
    assert_matrix_close(ours.get_covariance(), ref.get_covariance(), dtype_name, factor)
    if float(ref.noise_variance_) > 0:  # scikit-learn's precision is the inverse of a singular matrix otherwise
        assert_matrix_close(ours.get_precision(), ref.get_precision(), dtype_name, 100 * factor)


def test_partial_fit_over_batches_equals_fit_with_the_same_batch_size():
    rng = np.random.default_rng(1)
    X = _data(rng, 437, 25)
    fitted = StreamingPCA(6, batch_size=40).fit(X)
    streamed, ref = StreamingPCA(6), IncrementalPCA(6)
    for sl in _rows(437, 40, 6):  # the last, short batch merged as scikit-learn's gen_batches does
        streamed.partial_fit(X[sl])
        ref.partial_fit(X[sl])
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(streamed, name), getattr(fitted, name), rtol=0, atol=1e-13)
    assert streamed.n_samples_seen_ == fitted.n_samples_seen_ == 437
    assert streamed.noise_variance_ == pytest.approx(fitted.noise_variance_, rel=1e-12)
    _assert_like(streamed, ref, "float64")


@pytest.mark.parametrize("whiten", [False, True])
def test_full_rank_equals_pca_on_the_whole_data(whiten):
    rng = np.random.default_rng(2)
    X = _data(rng, 300, 10)
    ours = StreamingPCA(10, whiten=whiten, batch_size=30).fit(X)
    ref = PCA(10, whiten=whiten).fit(X)
    _assert_like(ours, ref, "float64", arrays=ARRAYS[:-1])  # PCA has no var_
    assert_matrix_close(ours.var_, X.var(axis=0), "float64")
    assert ours.noise_variance_ == ref.noise_variance_ == 0.0
    assert_matrix_close(ours.transform(X), ref.transform(X), "float64")
    # the probabilistic model of a full-rank fit is the sample covariance itself
    assert_matrix_close(ours.score_samples(X), ref.score_samples(X), "float64", 10)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-10)


def test_score_samples_is_the_probabilistic_pca_log_likelihood():
    """IncrementalPCA has no score_samples: compare with PCA's formula on its precision."""
    rng = np.random.default_rng(3)
    X = _data(rng, 500, 40)
    for whiten in (False, True):
        ours = StreamingPCA(7, whiten=whiten, batch_size=60).fit(X)
        ref = IncrementalPCA(7, whiten=whiten, batch_size=60).fit(X)
        P = ref.get_precision()
        Xr = X - ref.mean_
        expected = -0.5 * np.sum(Xr * (Xr @ P), axis=1) - 0.5 * (40 * np.log(2 * np.pi) - np.linalg.slogdet(P)[1])
        assert_matrix_close(ours.score_samples(X), expected, "float64", 100)
        assert ours.score(X) == pytest.approx(float(np.mean(expected)), rel=1e-9)


def test_sign_convention_is_scikit_learns_svd_flip():
    X = _data(np.random.default_rng(4), 200, 15)
    C = StreamingPCA(5, batch_size=50).fit(X).components_
    rows = np.arange(5)
    assert np.all(C[rows, np.argmax(np.abs(C), axis=1)] > 0)


def test_input_is_never_written_to_and_read_only_input_works():
    X = _data(np.random.default_rng(5), 120, 9)
    before = X.copy()
    X.setflags(write=False)
    est = StreamingPCA(3, batch_size=40, copy=False).fit(X)
    est.partial_fit(X[:30])
    est.transform(X)
    np.testing.assert_array_equal(X, before)


def test_rank_deficient_data_pads_with_orthonormal_zero_variance_components():
    """A first batch of n rows has rank n - 1 once centred, and constant features add nothing:
    the missing components have singular value 0, are orthonormal to the others and leave the
    covariance as scikit-learn's."""
    rng = np.random.default_rng(6)
    X = np.hstack([_data(rng, 40, 4), np.ones((40, 6))])  # rank 4 + constant features
    ours = StreamingPCA(6, batch_size=20).fit(X)
    ref = IncrementalPCA(6, batch_size=20).fit(X)
    assert_orthonormal(ours.components_.T, "float64")
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, atol=1e-12)
    assert np.all(ours.singular_values_[4:] <= 1e-12 * ours.singular_values_[0])
    assert_matrix_close(ours.get_covariance(), ref.get_covariance(), "float64", 10)
    first = StreamingPCA().partial_fit(X[:5])  # n_components = 5 rows, rank 4
    assert first.n_components_ == 5 and first.singular_values_[4] == 0
    assert_orthonormal(first.components_.T, "float64")


def test_one_sample_gives_scikit_learns_nan_variances_without_warnings():
    X = np.arange(5.0)[None, :]
    with np.errstate(all="raise"):
        est = StreamingPCA().fit(X)
    assert est.n_components_ == 1 and est.n_samples_seen_ == 1
    assert np.isnan(est.explained_variance_).all()
    assert_orthonormal(est.components_.T, "float64")


# --------------------------------------------------------------------------------------------
# decay: exponentially weighted mean, variance and covariance
# --------------------------------------------------------------------------------------------
def _weighted(batches, rho):
    """Dense reference: every sample weighted explicitly by rho^(age of its batch)."""
    T = len(batches)
    w = np.concatenate([np.full(len(B), rho ** (T - 1 - t)) for t, B in enumerate(batches)])
    X = np.concatenate(batches)
    N = w.sum()
    mu = w @ X / N
    Xc = X - mu
    S = (Xc * w[:, None]).T @ Xc
    return N, mu, np.diag(S) / N, S / (N - 1), S


@pytest.mark.parametrize("case", ["full-rank", "low-rank"])
def test_decay_follows_the_explicitly_weighted_mean_and_covariance_over_1000_batches(case):
    """With nothing truncated (k = d, or data of rank below k) the held estimator is exactly the
    exponentially weighted one; the mean drifts along the stream, so the mean correction matters."""
    rng = np.random.default_rng(7)
    rho, T, n = 0.99, 1000, 8
    if case == "full-rank":
        d, k = 6, 6
        mix = rng.standard_normal((d, d))
    else:
        d, k = 40, 6
        mix = rng.standard_normal((4, d))  # deviations and the drift lie in a 4-dim subspace
    est = StreamingPCA(k, decay=rho)
    batches = []
    for t in range(T):
        drift = np.sin(t / 50.0) * mix[0]
        B = rng.standard_normal((n, mix.shape[0])) * 0.8 ** np.arange(mix.shape[0]) @ mix + drift + 5.0
        batches.append(B)
        est.partial_fit(B)
        if t + 1 in (1, 10, 200, T):
            N, mu, var, cov, S = _weighted(batches, rho)
            assert est.n_samples_seen_ == pytest.approx(N, rel=1e-12)
            assert_matrix_close(est.mean_, mu, "float64")
            assert_matrix_close(est.var_, var, "float64", 10)
            w = np.linalg.eigvalsh(cov)[::-1][:k]
            assert_matrix_close(est.explained_variance_, w, "float64", 100)
            assert_matrix_close(est.explained_variance_ratio_, w * (N - 1) / np.trace(S), "float64", 100)
            V = est.components_.T
            assert_matrix_close((V * est.explained_variance_) @ V.T, cov, "float64", 100)
            assert_orthonormal(V, "float64")
    if case == "full-rank":
        assert_matrix_close(est.get_covariance(), cov, "float64", 100)
    assert est.n_samples_seen_ == pytest.approx(n * (1 - rho**T) / (1 - rho), rel=1e-12)


def test_decay_is_scikit_learns_recursion_with_the_held_spectrum_scaled_by_sqrt_rho():
    """With truncation: the dense recursion of the Notes, one stacked SVD per batch."""
    rng = np.random.default_rng(8)
    rho, k, d = 0.9, 4, 20
    est = StreamingPCA(k, decay=rho)
    N, mu, V, S, var = 0.0, None, None, None, None
    for t in range(30):
        B = _data(rng, 12, d) + t * 0.1
        est.partial_fit(B)
        m, n = B.mean(axis=0), len(B)
        N_new = rho * N + n
        if mu is None:
            M, mu, var = B - m, m, B.var(axis=0)
        else:
            c = np.sqrt(rho * N * n / N_new) * (mu - m)
            M = np.vstack([np.sqrt(rho) * S[:, None] * V, B - m, c])
            var = (rho * N * var + ((B - m) ** 2).sum(0) + rho * N * n / N_new * (mu - m) ** 2) / N_new
            mu = mu + n / N_new * (m - mu)
        _, s, Vt = np.linalg.svd(M, full_matrices=False)
        V, S, N = Vt[:k] * np.sign(Vt[:k][np.arange(k), np.argmax(np.abs(Vt[:k]), axis=1)])[:, None], s[:k], N_new
    assert_matrix_close(est.components_, V, "float64", 10)
    assert_matrix_close(est.singular_values_, S, "float64")
    assert_matrix_close(est.mean_, mu, "float64")
    assert_matrix_close(est.var_, var, "float64")
    assert est.n_samples_seen_ == pytest.approx(N, rel=1e-12)


# --------------------------------------------------------------------------------------------
# every backend
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [None, 0.9])
def test_every_backend_gives_the_numpy_result_in_its_own_namespace_and_dtype(xp, dtype_name, decay):
    rng = np.random.default_rng(9)
    X = _data(rng, 160, 14)
    extra = _data(rng, 30, 14)
    ref = StreamingPCA(4, decay=decay, batch_size=25, whiten=True).fit(X.astype(dtype_name))
    ref.partial_fit(extra.astype(dtype_name))
    Xb, Eb = asarray(xp, X, dtype_name), asarray(xp, extra, dtype_name)
    est = StreamingPCA(4, decay=decay, batch_size=25, whiten=True).fit(Xb)
    est.partial_fit(Eb)
    factor = 10.0 if dtype_name == "float32" else 1.0
    for name in ARRAYS:
        assert_backend(getattr(est, name), xp, dtype_name, like=Xb)
    _assert_like(est, ref, dtype_name, factor)
    out = est.transform(Eb)
    assert_backend(out, xp, dtype_name, like=Xb)
    assert_matrix_close(to_np(out), ref.transform(extra.astype(dtype_name)), dtype_name, factor)
    back = est.inverse_transform(out)
    assert_backend(back, xp, dtype_name, like=Xb)
    assert_matrix_close(to_np(back), ref.inverse_transform(ref.transform(extra.astype(dtype_name))), dtype_name, factor)
    assert_backend(est.get_covariance(), xp, dtype_name)
    assert_backend(est.get_precision(), xp, dtype_name)
    ll = est.score_samples(Eb)
    assert_backend(ll, xp, dtype_name, like=Xb)
    assert_matrix_close(to_np(ll), ref.score_samples(extra.astype(dtype_name)), dtype_name, 10 * factor)
    assert isinstance(est.score(Eb), float)
    assert_matrix_close(to_np(est.fit_transform(Xb)), ref.fit(X.astype(dtype_name)).transform(X.astype(dtype_name)),
                        dtype_name, factor)


def test_array_api_strict_arrays_stay_on_their_device():
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    X = xps.asarray(_data(np.random.default_rng(10), 60, 8), device=dev)
    est = StreamingPCA(3, batch_size=20).fit(X)
    for name in ARRAYS:
        assert getattr(est, name).device == dev
    assert est.transform(X).device == dev and est.score_samples(X).device == dev
    with pytest.raises(ValueError, match="device"):
        est.partial_fit(xps.asarray(_data(np.random.default_rng(11), 20, 8)))


def test_integer_input_is_converted_to_float64_as_scikit_learn_does(xp):
    Xi = np.random.default_rng(12).integers(-20, 20, size=(90, 7))
    ours = StreamingPCA(3, batch_size=30).fit(xp.asarray(Xi))
    assert ours.components_.dtype == xp.float64
    ref = IncrementalPCA(3, batch_size=30).fit(Xi)
    _assert_like(ours, ref, "float64", 10)


def test_float32_batches_join_a_float64_fit_in_its_dtype():
    X = _data(np.random.default_rng(13), 80, 6)
    est = StreamingPCA(2, batch_size=40).fit(X)
    est.partial_fit(X[:20].astype(np.float32))
    assert est.components_.dtype == np.float64


# --------------------------------------------------------------------------------------------
# scikit-learn integration
# --------------------------------------------------------------------------------------------
def test_passes_scikit_learns_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    for est in (StreamingPCA(), StreamingPCA(2, decay=0.8, whiten=True, batch_size=7)):
        check_estimator(est)


@pytest.mark.slow
def test_passes_scikit_learns_array_api_checks_with_torch_and_array_api_strict():
    """scikit-learn runs them only with SCIPY_ARRAY_API=1 set before SciPy is imported."""
    code = textwrap.dedent(
        """
        import warnings
        from sklearn.utils.estimator_checks import check_estimator
        from lowrank_online import StreamingPCA
        warnings.simplefilter("ignore")
        res = check_estimator(StreamingPCA(), on_fail=None)
        api = [r for r in res if "array_api" in r["check_name"]]
        failed = [(r["check_name"], repr(r["exception"])) for r in res if r["status"] == "failed"]
        assert not failed, failed
        passed = sum(r["status"] == "passed" for r in api)
        assert passed >= 4, api
        print("ok", passed)
        """
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_pipeline_clone_grid_search_and_pickle():
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(14)
    X = _data(rng, 200, 12)
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    pipe = make_pipeline(StreamingPCA(5, batch_size=50), LogisticRegression()).fit(X, y)
    assert pipe.score(X, y) > 0.5
    est = StreamingPCA(3, decay=0.9, whiten=True)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "components_")
    search = GridSearchCV(StreamingPCA(batch_size=40), {"n_components": [1, 4, 8]}, cv=3).fit(X)
    assert search.best_params_["n_components"] in (1, 4, 8) and np.isfinite(search.best_score_)
    fitted = StreamingPCA(4, batch_size=50).fit(X)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.components_, fitted.components_)
    assert fitted.get_feature_names_out().tolist() == ["streamingpca0", "streamingpca1", "streamingpca2",
                                                      "streamingpca3"]
    assert est.set_params(n_components=2).n_components == 2
    assert repr(StreamingPCA(3, decay=0.5)) == "StreamingPCA(decay=0.5, n_components=3)"


def test_works_without_scikit_learn():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["sklearn"] = None  # every import of scikit-learn now fails
        import numpy as np
        import lowrank_online
        from lowrank_online import StreamingPCA
        from lowrank_online.pca import NotFittedError
        rng = np.random.default_rng(0)
        X = rng.standard_normal((120, 8)) * 0.7 ** np.arange(8) + 1
        est = StreamingPCA(3, batch_size=40)
        try:
            est.transform(X)
        except NotFittedError as err:
            assert isinstance(err, ValueError) and isinstance(err, AttributeError)
        else:
            raise AssertionError("transform before fit")
        Y = est.fit_transform(X.tolist())
        assert Y.shape == (120, 3) and est.n_features_in_ == 8
        assert est.get_params()["n_components"] == 3 and est.set_params(whiten=True).whiten
        assert repr(est) == "StreamingPCA(batch_size=40, n_components=3, whiten=True)", repr(est)
        for bad, kind in ((X[:, :5], ValueError), (X[0], ValueError), (np.full((3, 8), np.nan), ValueError)):
            try:
                est.partial_fit(bad)
            except kind:
                pass
            else:
                raise AssertionError(bad.shape)
        assert est.n_samples_seen_ == 120
        assert "sklearn" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_importing_the_library_does_not_import_scikit_learn():
    code = "import sys, lowrank_online; assert 'sklearn' not in sys.modules; print('ok')"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# bad input: scikit-learn's errors, and a refused partial_fit changes nothing
# --------------------------------------------------------------------------------------------
def _bad_inputs(xp, dtype_name):
    base = _data(np.random.default_rng(15), 10, 6)
    nan, inf = base.copy(), base.copy()
    nan[3, 2] = np.nan
    inf[7, 0] = np.inf
    return {
        "nan row": (asarray(xp, nan, dtype_name), "contains NaN"),
        "inf row": (asarray(xp, inf, dtype_name), "contains infinity"),
        "other features": (asarray(xp, base[:, :5], dtype_name), "X has 5 features, but StreamingPCA is expecting 6"),
        "1-D": (asarray(xp, base[0], dtype_name), "Expected 2D array, got 1D array"),
        "empty": (asarray(xp, base[:0], dtype_name), r"0 sample\(s\)"),
    }


def test_bad_batches_raise_scikit_learns_errors_and_leave_the_state_unchanged(xp, dtype_name):
    est = StreamingPCA(3, batch_size=20).fit(asarray(xp, _data(np.random.default_rng(16), 40, 6), dtype_name))
    state, features = est._state, est.n_features_in_
    ref = IncrementalPCA(3, batch_size=20).fit(_data(np.random.default_rng(16), 40, 6))
    for label, (bad, message) in _bad_inputs(xp, dtype_name).items():
        with pytest.raises(ValueError, match=message):
            est.partial_fit(bad)
        assert est._state is state and est.n_features_in_ == features, label
        if label != "other features":
            with pytest.raises(ValueError):
                est.transform(bad)
        try:  # the same exception type as scikit-learn's for the same input
            ref.partial_fit(to_np(bad))
        except Exception as err:  # noqa: BLE001 - whatever scikit-learn raises
            assert isinstance(err, ValueError), (label, err)
        else:
            raise AssertionError(f"scikit-learn accepted {label}")


def test_transform_before_fit_raises_not_fitted_error(xp):
    X = asarray(xp, _data(np.random.default_rng(17), 10, 4))
    est = StreamingPCA(2)
    for method in (est.transform, est.inverse_transform, est.score_samples, est.score):
        with pytest.raises(NotFittedError):
            method(X)
    with pytest.raises(NotFittedError):
        est.get_covariance()
    assert not hasattr(est, "components_") and not hasattr(est, "n_features_in_")
    with pytest.raises(NotFittedError):
        IncrementalPCA(2).transform(to_np(X))  # scikit-learn's exception type, the same


def test_n_components_rules_and_parameters_are_scikit_learns(xp):
    X = asarray(xp, _data(np.random.default_rng(18), 30, 6))
    with pytest.raises(ValueError, match="n_components=7 invalid for n_features=6"):
        StreamingPCA(7).fit(X)
    with pytest.raises(ValueError, match="must be less or equal to the batch number of samples 4"):
        StreamingPCA(5).partial_fit(X[:4, :])
    for cls in (StreamingPCA, IncrementalPCA):  # the same types
        with pytest.raises(ValueError):
            cls(7).fit(to_np(X))
    est = StreamingPCA(5)
    with pytest.raises(ValueError):
        est.partial_fit(X[:4, :])
    assert not hasattr(est, "n_features_in_") and not hasattr(est, "components_")
    fitted = StreamingPCA(3, batch_size=10).fit(X)
    before = fitted._state
    with pytest.raises(ValueError):  # a fit that fails keeps the previous fit
        fitted.set_params(n_components=40).fit(X)
    assert fitted._state is before and fitted.n_features_in_ == 6
    with pytest.raises(ValueError, match="n_components has changed from 3 to 2"):
        fitted.set_params(n_components=2).partial_fit(X)
    for params, kind, name in (
        ({"n_components": 0}, ValueError, "n_components"),
        ({"n_components": 2.5}, TypeError, "n_components"),
        ({"decay": 1.0}, ValueError, "decay"),
        ({"decay": 0.0}, ValueError, "decay"),
        ({"decay": "fast"}, TypeError, "decay"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"whiten": "yes"}, TypeError, "whiten"),
    ):
        with pytest.raises(kind, match=f"`{name}`"):
            StreamingPCA(**{"n_components": 2, **params}).fit(X)


def test_input_from_another_namespace_is_refused_and_changes_nothing():
    torch = pytest.importorskip("torch")
    X = _data(np.random.default_rng(19), 40, 5)
    est = StreamingPCA(2, batch_size=20).fit(X)
    state = est._state
    with pytest.raises(TypeError, match="`components_` is a numpy array but `X` is a torch array"):
        est.partial_fit(torch.asarray(X))
    with pytest.raises(NamespaceMismatchError, match=r"StreamingPCA\.transform\(\): `X` must use the same namespace"):
        est.transform(torch.asarray(X))
    assert est._state is state
    assert issubclass(NamespaceMismatchError, TypeError) and issubclass(NamespaceMismatchError, ValueError)


def test_sparse_and_complex_input_are_refused_like_scikit_learn():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X = _data(np.random.default_rng(20), 20, 4)
    with pytest.raises(TypeError, match="[Ss]parse"):
        StreamingPCA(2).fit(scipy_sparse.csr_matrix(X))
    with pytest.raises(ValueError, match="Complex data not supported"):
        StreamingPCA(2).fit(X + 1j)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="Complex data not supported"):
        StreamingPCA(2).fit(torch.asarray(X + 1j))


def test_float32_overflow_is_a_decomposition_error_and_keeps_the_state():
    X = _data(np.random.default_rng(21), 40, 5, dtype=np.float32)
    est = StreamingPCA(2, batch_size=20).fit(X)
    state = est._state
    with pytest.raises(DecompositionError, match="overflows"), np.errstate(over="ignore", invalid="ignore"):
        est.partial_fit(X * np.float32(1e25))
    assert est._state is state


# --------------------------------------------------------------------------------------------
# checkpoints, progress bar
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [None, 0.95])
def test_state_dict_round_trip_resumes_bit_exactly(tmp_path, decay):
    rng = np.random.default_rng(22)
    batches = [_data(rng, 30, 16) for _ in range(10)]
    whole = StreamingPCA(5, decay=decay, whiten=True)
    for B in batches:
        whole.partial_fit(B)
    head = StreamingPCA(5, decay=decay, whiten=True)
    for B in batches[:6]:
        head.partial_fit(B)
    save_state(tmp_path / "pca.npz", head.state_dict())
    resumed = StreamingPCA.from_state_dict(load_state(tmp_path / "pca.npz"))
    assert resumed.get_params() == head.get_params() and resumed.n_features_in_ == 16
    for B in batches[6:]:
        resumed.partial_fit(B)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
    assert resumed.n_samples_seen_ == whole.n_samples_seen_ and type(resumed.n_samples_seen_) is type(
        whole.n_samples_seen_)
    assert resumed.noise_variance_ == whole.noise_variance_
    fitted = StreamingPCA(3, batch_size=100).fit(np.concatenate(batches))
    again = StreamingPCA.from_state_dict(load_state_round_trip(tmp_path, fitted.state_dict()))
    assert again.batch_size_ == 100
    unfitted = StreamingPCA.from_state_dict(load_state_round_trip(tmp_path, StreamingPCA(4).state_dict()))
    assert unfitted.n_components == 4 and not hasattr(unfitted, "components_")


def load_state_round_trip(tmp_path, state):
    save_state(tmp_path / "rt.npz", state)
    return load_state(tmp_path / "rt.npz")


def test_state_dict_moves_to_another_namespace(tmp_path, xp):
    rng = np.random.default_rng(23)
    batches = [_data(rng, 25, 10) for _ in range(6)]
    ref = StreamingPCA(3)
    for B in batches:
        ref.partial_fit(B)
    head = StreamingPCA(3)
    for B in batches[:3]:
        head.partial_fit(B)
    moved = StreamingPCA.from_state_dict(load_state_round_trip(tmp_path, head.state_dict()), xp=xp)
    for B in batches[3:]:
        moved.partial_fit(asarray(xp, B))
    assert_backend(moved.components_, xp, "float64")
    _assert_like(moved, ref, "float64")
    with pytest.raises(ValueError, match="lacks the entries"):
        StreamingPCA.from_state_dict({"params": {}, "state": {"components": np.eye(3)}})


def test_verbose_fit_shows_progress(capsys, monkeypatch):
    X = _data(np.random.default_rng(24), 100, 5)
    StreamingPCA(2, batch_size=25, verbose=True).fit(X)
    assert "StreamingPCA.fit" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm missing: a line per batch
    StreamingPCA(2, batch_size=25, verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "StreamingPCA.fit: batch 4/4" in err
    StreamingPCA(2, batch_size=25).fit(X)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------
# adversarial shapes and structure against scikit-learn (hypothesis)
# --------------------------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    n=st.integers(1, 60),
    d=st.integers(1, 25),
    batch=st.integers(1, 30),
    k=st.one_of(st.none(), st.integers(1, 25)),
    structure=st.sampled_from(["generic", "duplicate rows", "constant features", "low rank", "scaled"]),
    seed=st.integers(0, 2**16),
)
def test_agrees_with_scikit_learn_on_any_shape_and_structure(n, d, batch, k, structure, seed):
    """Where components are not unique (zero or repeated singular values), the model they
    define is: compare singular values, mean, variance and the covariance of the model."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * 0.8 ** np.arange(d) + rng.standard_normal(d)
    if structure == "duplicate rows":
        X[n // 2 :] = X[: n - n // 2]
    elif structure == "constant features":
        X[:, ::2] = 1.5
    elif structure == "low rank":
        X = rng.standard_normal((n, 2)) @ rng.standard_normal((2, d))
    elif structure == "scaled":
        X *= np.logspace(-4, 4, d)
    kw = {"n_components": k, "batch_size": batch}
    try:
        with np.errstate(all="ignore"):
            ref = IncrementalPCA(**kw).fit(X)
        # one batch of fewer rows than n_components: scikit-learn keeps fewer components than
        # n_components_; refused here as its partial_fit and its fit on two batches refuse it
        refused = ref.components_.shape[0] != ref.n_components_
    except ValueError:
        refused = True
    if refused:
        with pytest.raises(ValueError, match="n_components"):
            StreamingPCA(**kw).fit(X)
        return
    with np.errstate(all="ignore"):
        ours = StreamingPCA(**kw).fit(X)
    assert ours.n_components_ == ref.n_components_ and ours.n_samples_seen_ == ref.n_samples_seen_
    scale = max(float(np.max(ref.singular_values_)), 1e-300)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-12, atol=1e-12 * np.abs(X).max())
    np.testing.assert_allclose(ours.var_, ref.var_, rtol=1e-9, atol=1e-12 * np.abs(X).max() ** 2)
    assert_orthonormal(ours.components_.T, "float64")
    if n > 1:
        V, W = ours.components_.T, ref.components_.T
        ours_cov = (V * ours.explained_variance_) @ V.T
        ref_cov = (W * ref.explained_variance_) @ W.T
        np.testing.assert_allclose(ours_cov, ref_cov, rtol=0, atol=1e-9 * max(np.abs(ref_cov).max(), 1e-300))


# --------------------------------------------------------------------------------------------
# Dask: the feature dimension chunked, on the Dask tests' LocalCluster (conftest.client)
# --------------------------------------------------------------------------------------------
FEATURE_CHUNK = 96  # several blocks of features, and a ragged last one


def _dask_rows(X, chunk=FEATURE_CHUNK, sample_chunk=-1):
    da = pytest.importorskip("dask.array")
    return da.from_array(np.asarray(X), chunks=(sample_chunk, chunk)).persist()


@pytest.mark.parametrize(("dtype_name", "decay"), [("float64", None), ("float32", 0.9)])
def test_dask_fit_and_stream_equal_numpy_and_the_factor_stays_on_the_workers(client, decay, dtype_name):
    da = pytest.importorskip("dask.array")
    from _helpers import measure  # the probe of benchmarks/bench_dask.py's footprint table

    scheduler_tasks = measure.scheduler_tasks

    rng = np.random.default_rng(30)
    d = 500
    X = _data(rng, 192, d, ratio=0.97, dtype=np.dtype(dtype_name))
    ref = StreamingPCA(6, decay=decay, batch_size=64).fit(X)
    dX = _dask_rows(X, sample_chunk=100)  # samples chunked too: merged per batch
    est = StreamingPCA(6, decay=decay, batch_size=64).fit(dX)
    factor = 10.0 if dtype_name == "float32" else 1.0
    for name in ARRAYS:
        assert isinstance(getattr(est, name), da.Array), name
    blocks = dX.chunks[1]
    assert est.components_.chunks == ((6,), blocks)
    held = est._state.components
    assert held.chunks[0] == blocks and len(held.__dask_graph__()) == len(blocks)  # computed, no lineage
    _assert_like(_computed(est), ref, dtype_name, factor)
    for _ in range(6):  # a stream: the held factor stays a few blocks on the workers
        B = _data(rng, 40, d, ratio=0.97, dtype=np.dtype(dtype_name))
        ref.partial_fit(B)
        est.partial_fit(_dask_rows(B))
        assert len(est._state.components.__dask_graph__()) == len(blocks)
    del dX, B, held
    # the scheduler holds the state's blocks (factor, mean, variance) and no lineage
    held_keys = 3 * len(blocks)
    deadline = time.monotonic() + 30
    while client.run_on_scheduler(scheduler_tasks) > held_keys and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.run_on_scheduler(scheduler_tasks) == held_keys
    _assert_like(_computed(est), ref, dtype_name, factor)
    Y = _dask_rows(X[:30])
    out = est.transform(Y)  # lazy, like every method's output on Dask
    assert isinstance(out, da.Array) and out.dtype == X.dtype
    assert_matrix_close(to_np(out.compute()), ref.transform(X[:30]), dtype_name, factor)
    assert_matrix_close(to_np(est.inverse_transform(out).compute()), ref.inverse_transform(ref.transform(X[:30])),
                        dtype_name, factor)
    assert est.score(Y) == pytest.approx(ref.score(X[:30]), rel=1e-9 if dtype_name == "float64" else 1e-4)


class _Computed:
    """The fitted attributes of a Dask-fitted estimator, computed (for _assert_like)."""

    def __init__(self, est):
        for name in ARRAYS:
            setattr(self, name, getattr(est, name).compute())
        self.n_components_, self.n_samples_seen_ = est.n_components_, est.n_samples_seen_
        self.noise_variance_ = est.noise_variance_


def _computed(est):
    return _Computed(est)


def test_dask_batch_with_nan_is_refused_on_the_cores_and_changes_nothing(client):
    rng = np.random.default_rng(31)
    X = _data(rng, 120, 300)
    est = StreamingPCA(4, batch_size=60).fit(_dask_rows(X))
    state = est._state
    bad = X[:40].copy()
    bad[5, 250] = np.nan
    with pytest.raises(ValueError, match="`X` contains NaN or infinity"):
        est.partial_fit(_dask_rows(bad))
    assert est._state is state
    est.partial_fit(_dask_rows(X[:40]))  # and it carries on
    assert est.n_samples_seen_ == 160
    with pytest.raises(ValueError, match="X has 299 features, but StreamingPCA is expecting 300"):
        est.partial_fit(_dask_rows(X[:40, :299]))
    with pytest.raises(TypeError, match="`components_` is a dask.array array but `X` is a numpy array"):
        est.partial_fit(X[:40])
    assert est.n_samples_seen_ == 160


def test_dask_checkpoint_restart_and_resume(client, tmp_path):
    import array_api_compat.dask.array as dxp

    rng = np.random.default_rng(32)
    batches = [_data(rng, 30, 250) for _ in range(8)]
    ref = StreamingPCA(5, decay=0.95)
    for B in batches:
        ref.partial_fit(B)
    est = StreamingPCA(5, decay=0.95)
    for B in batches[:5]:
        est.partial_fit(_dask_rows(B))
    save_state(tmp_path / "pca.npz", est.state_dict())
    client.restart()
    resumed = StreamingPCA.from_state_dict(load_state(tmp_path / "pca.npz"), xp=dxp, chunks=FEATURE_CHUNK)
    assert resumed._state.components.chunks[0] == _dask_rows(batches[0]).chunks[1]
    for B in batches[5:]:
        resumed.partial_fit(_dask_rows(B))
    _assert_like(_computed(resumed), ref, "float64")


def test_batches_wider_than_the_features_take_the_dense_path_and_equal_scikit_learn(monkeypatch):
    """n >= d - k: the stacked matrix's R factor instead of a complement that would span R^d
    (and take its slow rank-revealing path); the Brand path is never entered."""
    from lowrank_online import pca

    def refuse(*args, **kwargs):
        raise AssertionError("Brand path taken for a batch wider than the features")

    monkeypatch.setattr(pca, "_brand_update", refuse)
    X = _data(np.random.default_rng(33), 600, 40)
    ours = StreamingPCA(10, batch_size=200).fit(X)
    ref = IncrementalPCA(10, batch_size=200).fit(X)
    _assert_like(ours, ref, "float64")


def test_demo_section_reports_agreement_and_speed():
    from lowrank_online.demo import pca as pca_demo

    out = pca_demo.section(True)
    assert "StreamingPCA against scikit-learn's IncrementalPCA" in out.title
    assert any("per partial_fit" in line for line in out.lines)
    checks = {c.name: c for c in out.checks}
    assert checks["components, max |difference|"].value < 1e-10
    assert all(c.passed for c in out.checks), out.checks
