"""LowRankEMA never dies of a numerical failure and no finite input poisons it.

Fault injection: the backend's ``eigh``, ``svd`` and ``qr`` (NumPy and PyTorch) are made to
raise or to return NaN, all at once or one at a time, always or on their first call only, at
every call site an operation of the tracker reaches (the Brand update, its rank-revealing
path, the wide route through ``A A^T``, the randomized refresh with and without its QR
fallback, the dense refresh, the correction, the re-orthonormalisation of the commit).
Poisoning: finite batches whose update overflows the dtype.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import RTOL, asarray, to_np

from lowrank_online import DecompositionError, LowRankEMA, ema

D = 30
FUNCTIONS = ("eigh", "svd", "qr")


def _namespace(name):
    if name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp
    else:
        import array_api_compat.numpy as xp
    return xp


class _Fault:
    """``original`` made to raise ``LinAlgError`` or to return NaN, on every call or on the
    first ``times`` calls."""

    def __init__(self, kind, original, times=None):
        self.kind, self.original, self.times, self.calls = kind, original, times, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.times is not None and self.calls > self.times:
            return self.original(*args, **kwargs)
        if self.kind == "raise":
            raise np.linalg.LinAlgError("injected failure")
        out = self.original(*args, **kwargs)
        if not isinstance(out, tuple):
            return out * float("nan")
        poisoned = [x * float("nan") for x in out]
        return out._make(poisoned) if hasattr(out, "_make") else type(out)(poisoned)  # torch.return_types


def _psd(rng, rank=D):
    F = rng.standard_normal((D, rank)) * 0.8 ** np.arange(rank)
    return F @ F.T


# Each operation: (build the tracker, apply the operation). Build and apply take (rng, xp, dtype).
def _tracker(rng, xp, dtype, **kwargs):
    tracker = LowRankEMA(3, 0.9, max_failures=3, **kwargs)
    for _ in range(3):
        tracker.update(asarray(xp, rng.standard_normal((D, 2)), dtype))
    return tracker


def _duplicate_batch(rng):
    A = rng.standard_normal((D, 4))
    A[:, 2:] = A[:, :2]  # duplicate columns: the rank-revealing path of the complement
    return A


OPERATIONS = {
    "update": lambda t, rng, xp, dt: t.update(asarray(xp, rng.standard_normal((D, 2)), dt)),
    "update-rank-revealing": lambda t, rng, xp, dt: t.update(asarray(xp, _duplicate_batch(rng), dt)),
    "update-wide": lambda t, rng, xp, dt: t.update(asarray(xp, rng.standard_normal((D, 40)), dt)),
    "refresh": lambda t, rng, xp, dt: t.refresh(asarray(xp, _psd(rng), dt), seed=1, n_iter=2),
    # X of rank 2 < the sketch's 13 columns: CholeskyQR breaks down and Householder QR takes over.
    "refresh-low-rank": lambda t, rng, xp, dt: t.refresh(asarray(xp, _psd(rng, 2), dt), seed=1, n_iter=2),
    "refresh-dense": lambda t, rng, xp, dt: t.refresh(asarray(xp, _psd(rng), dt), seed=1, oversample=30),
    "correct": lambda t, rng, xp, dt: t.correct(asarray(xp, _psd(rng), dt), 2, seed=1),
}


def _snapshot(tracker):
    return (to_np(tracker.eigenvalues).copy(), to_np(tracker.eigenvectors).copy(), tracker.n_updates)


def _assert_same(tracker, snapshot):
    np.testing.assert_array_equal(to_np(tracker.eigenvalues), snapshot[0])
    np.testing.assert_array_equal(to_np(tracker.eigenvectors), snapshot[1])
    assert tracker.n_updates == snapshot[2]


def _assert_close_state(tracker, reference, dtype):
    """Same represented matrix (Q diag(L) Q^T) as the reference, to the dtype's tolerance."""
    def dense(t):
        Q, L = to_np(t.eigenvectors), to_np(t.eigenvalues)
        return (Q * L) @ Q.T

    want = dense(reference)
    err = np.linalg.norm(dense(tracker) - want) / np.linalg.norm(want)
    assert err <= 1e3 * RTOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["raise", "nan"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_decomposition_failing_skips_keeps_the_state_and_raises_after_max_failures(
    monkeypatch, backend, kind, operation
):
    xp = _namespace(backend)
    rng = np.random.default_rng(0)
    tracker = _tracker(rng, xp, "float64")
    before = _snapshot(tracker)
    apply = OPERATIONS[operation]
    with monkeypatch.context() as m:
        for name in FUNCTIONS:
            m.setattr(xp.linalg, name, _Fault(kind, getattr(xp.linalg, name)))
        with pytest.warns(RuntimeWarning, match=r"LowRankEMA\.\w+ skipped.*previous representation is kept"):
            apply(tracker, np.random.default_rng(1), xp, "float64")
        _assert_same(tracker, before)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per tracker: the second skip is silent
            apply(tracker, np.random.default_rng(1), xp, "float64")
        assert tracker.skipped_updates == 2
        with pytest.raises(DecompositionError, match="3 consecutive operations failed"):
            apply(tracker, np.random.default_rng(1), xp, "float64")
        _assert_same(tracker, before)
    apply(tracker, np.random.default_rng(1), xp, "float64")  # the stream resumes
    assert tracker.skipped_updates == 3 and tracker._failures == 0
    assert np.all(np.isfinite(to_np(tracker.eigenvectors)))


@pytest.mark.parametrize("kind", ["raise", "nan"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_float32_tracker_that_fails_in_float64_too_keeps_its_state(monkeypatch, kind, operation):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(2)
    tracker = _tracker(rng, xp, "float32")
    before = _snapshot(tracker)
    with monkeypatch.context() as m:
        for name in FUNCTIONS:
            m.setattr(xp.linalg, name, _Fault(kind, getattr(xp.linalg, name)))
        with pytest.warns(RuntimeWarning, match="in float64"):
            OPERATIONS[operation](tracker, np.random.default_rng(3), xp, "float32")
    _assert_same(tracker, before)
    assert tracker.eigenvectors.dtype == np.float32 and tracker.skipped_updates == 1


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["raise", "nan"])
@pytest.mark.parametrize("broken", FUNCTIONS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_one_broken_decomposition_is_replaced_by_its_fallback(monkeypatch, backend, kind, broken, operation):
    """eigh -> SVD, SVD -> eigh (small cores) or QR + SVD (tall blocks), QR -> SVD: the
    operation goes through, unwarned, with the result of the unbroken run."""
    xp = _namespace(backend)
    reference = _tracker(np.random.default_rng(4), xp, "float64")
    OPERATIONS[operation](reference, np.random.default_rng(5), xp, "float64")
    tracker = _tracker(np.random.default_rng(4), xp, "float64")
    fault = _Fault(kind, getattr(xp.linalg, broken))
    with monkeypatch.context() as m:
        m.setattr(xp.linalg, broken, fault)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            OPERATIONS[operation](tracker, np.random.default_rng(5), xp, "float64")
    assert tracker.skipped_updates == 0
    _assert_close_state(tracker, reference, "float64")
    assert tracker.n_updates == reference.n_updates


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["raise", "nan"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_transient_failure_is_survived(monkeypatch, dtype, kind, operation):
    """Every decomposition fails on its first call only: the operation either goes through
    with the unbroken result (a fallback or the float64 retry recovered) or is skipped with
    the state kept; either way the next one is normal."""
    import array_api_compat.numpy as xp

    reference = _tracker(np.random.default_rng(6), xp, dtype)
    OPERATIONS[operation](reference, np.random.default_rng(7), xp, dtype)
    tracker = _tracker(np.random.default_rng(6), xp, dtype)
    before = _snapshot(tracker)
    with monkeypatch.context() as m:
        for name in FUNCTIONS:
            m.setattr(xp.linalg, name, _Fault(kind, getattr(xp.linalg, name), times=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            OPERATIONS[operation](tracker, np.random.default_rng(7), xp, dtype)
    if tracker.skipped_updates:
        _assert_same(tracker, before)
        OPERATIONS[operation](tracker, np.random.default_rng(7), xp, dtype)
        assert tracker.skipped_updates == 1
    _assert_close_state(tracker, reference, dtype)
    if dtype == "float32":
        assert tracker.skipped_updates == 0  # the float64 retry recovered
        assert tracker.eigenvectors.dtype == np.float32


def test_a_failing_reorthonormalisation_is_inside_the_protection(monkeypatch):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(8)
    tracker = _tracker(rng, xp, "float64", reorthonormalize_every=4)
    before = _snapshot(tracker)

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("injected failure in the re-orthonormalisation")

    monkeypatch.setattr(ema, "_restore_orthonormality", broken)
    with pytest.warns(RuntimeWarning, match="update skipped at update 4: injected failure"):
        tracker.update(rng.standard_normal((D, 2)))  # the 4th update re-orthonormalises
    _assert_same(tracker, before)
    monkeypatch.undo()
    tracker.update(rng.standard_normal((D, 2)))
    assert tracker.n_updates == 4


def test_a_refusal_in_the_middle_of_a_computation_is_a_refusal_not_a_skip():
    rng = np.random.default_rng(9)
    tracker = _tracker(rng, np, "float64")
    before = _snapshot(tracker)
    X = np.triu(_psd(rng))  # not symmetric: reigh's first sketch finds it
    with pytest.raises(ValueError, match="`X` must be symmetric"):
        tracker.refresh(X, seed=0)
    with pytest.raises(ValueError, match="`X` must be symmetric"):
        tracker.correct(X, 2)
    wide = rng.standard_normal((D, 40))
    wide[3, 5] = np.nan  # a wide batch is checked by the update itself, from its Gram matrix
    with pytest.raises(ValueError, match="`A` contains NaN"):
        tracker.update(wide)
    _assert_same(tracker, before)
    assert tracker.skipped_updates == 0


def test_a_symmetric_operator_is_checked_on_the_corrected_modes():
    rng = np.random.default_rng(10)
    tracker = _tracker(rng, np, "float64")
    X = _psd(rng)

    class Operator:
        shape, dtype = (D, D), np.float64

        def __init__(self, M):
            self.M = M

        def matmat(self, V):
            return self.M @ V

    tracker.correct(Operator(X), 2, seed=0)
    before = _snapshot(tracker)
    with pytest.raises(ValueError, match="`X` must be symmetric; on the corrected modes"):
        tracker.correct(Operator(np.triu(X)), 2, seed=0)
    _assert_same(tracker, before)


@pytest.mark.parametrize(("dtype", "scale"), [("float64", 1e200), ("float32", 1e25)])
@pytest.mark.parametrize("width", [2, 40])
def test_a_huge_finite_batch_is_skipped_and_the_stream_goes_on(dtype, scale, width):
    """``(1 - rho) |A|^2`` overflows the dtype (float32: in float64 too it does not fit)."""
    rng = np.random.default_rng(11)
    tracker = _tracker(rng, np, dtype)
    before = _snapshot(tracker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.update((rng.standard_normal((D, width)) * scale).astype(dtype))
    assert any("update skipped at update 4" in str(w.message) for w in caught)
    _assert_same(tracker, before)
    assert tracker.skipped_updates == 1
    for _ in range(3):
        tracker.update(rng.standard_normal((D, 2)).astype(dtype))
    assert tracker.skipped_updates == 1 and tracker.n_updates == 6
    assert np.all(np.isfinite(to_np(tracker.eigenvectors)))


def test_a_float32_update_that_overflows_only_in_float32_is_computed_in_float64(monkeypatch):
    """Failures of the float32 computation alone are retried in float64 and cast back."""
    rng = np.random.default_rng(12)
    tracker = _tracker(rng, np, "float32")
    reference = _tracker(np.random.default_rng(12), np, "float32")
    A = rng.standard_normal((D, 2)).astype(np.float32)
    reference.update(A)
    original = ema._b_update

    def fails_in_float32(state, A, *args):
        if A.dtype == np.float32:
            raise FloatingPointError("injected float32 overflow")
        return original(state, A, *args)

    monkeypatch.setattr(ema, "_b_update", fails_in_float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tracker.update(A)
    assert tracker.skipped_updates == 0 and tracker.eigenvectors.dtype == np.float32
    _assert_close_state(tracker, reference, "float32")


def test_skips_are_counted_in_checkpoints():
    rng = np.random.default_rng(13)
    tracker = _tracker(rng, np, "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tracker.update(rng.standard_normal((D, 2)) * 1e200)
    restored = LowRankEMA.from_state_dict(tracker.state_dict())
    assert restored.skipped_updates == 1 and restored.max_failures == 3


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _saved():
    rng = np.random.default_rng(14)
    tracker = LowRankEMA(3, 0.9, reorthonormalize_every=4, max_failures=5)
    for _ in range(3):
        tracker.update(rng.standard_normal((D, 2)))
    return tracker.state_dict()


def _edit(key, value):
    def apply(state):
        state[key] = value(state) if callable(value) else value
    return apply


def _drop(key):
    return lambda state: state.pop(key)


TAMPERED = [
    (_drop("rank"), r"lacks the entries \['rank'\]"),
    (_drop("decay"), r"lacks the entries \['decay'\]"),
    (_drop("n_updates"), r"lacks the entries \['n_updates'\]"),
    (_drop("eigenvectors"), "has 'eigenvalues' but not 'eigenvectors'"),
    (_drop("eigenvalues"), "has 'eigenvectors' but not 'eigenvalues'"),
    (lambda s: s.__setitem__("eigvecs", s.pop("eigenvectors")), r"unknown entries \['eigvecs'\]"),
    (_edit("format", 3), r"`state\['format'\]` is 3"),
    (_edit("format", "2"), r"`state\['format'\]` must be an integer"),
    (_edit("rank", 2.5), r"`state\['rank'\]` must be an integer >= 1, got 2.5"),
    (_edit("rank", 0), r"`state\['rank'\]` must be an integer >= 1"),
    (_edit("rank", True), r"`state\['rank'\]` must be an integer"),
    (_edit("n_updates", -1), r"`state\['n_updates'\]` must be an integer >= 0"),
    (_edit("max_failures", 0), r"`state\['max_failures'\]` must be an integer >= 1"),
    (_edit("skipped_updates", 1.5), r"`state\['skipped_updates'\]` must be an integer"),
    (_edit("reorthonormalize_every", -2), r"`state\['reorthonormalize_every'\]` must be an integer >= 0"),
    (_edit("decay", 0.0), r"`state\['decay'\]` must lie in \(0, 1\]"),
    (_edit("decay", float("nan")), r"`state\['decay'\]` must lie in \(0, 1\]"),
    (_edit("decay", "0.9"), r"`state\['decay'\]` must be a real number"),
    (_edit("eigenvalues", lambda s: s["eigenvalues"] * np.nan), r"`state\['eigenvalues'\]` contains NaN"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"] * np.inf), r"`state\['eigenvectors'\]` contains NaN"),
    (_edit("eigenvalues", lambda s: -s["eigenvalues"]), r"`state\['eigenvalues'\]` must be non-negative"),
    (_edit("eigenvalues", lambda s: s["eigenvalues"][::-1].copy()), r"`state\['eigenvalues'\]` must be sorted"),
    (_edit("eigenvalues", lambda s: s["eigenvalues"][:-1]), r"must be \(d, m\) and \(m,\)"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"][:-1, :]), r"`state\['eigenvectors'\]` must be orthonormal"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"][:, :1]), r"must be \(d, m\) and \(m,\)"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"][None]), r"`state\['eigenvectors'\]` must be 2-D"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"] * 1.01), r"`state\['eigenvectors'\]` must be orthonormal"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"].astype(np.float32)), "a tracker holds one dtype"),
    (_edit("eigenvectors", lambda s: s["eigenvectors"].astype(np.int64)), r"`state\['eigenvectors'\]` must have dtype"),
    (_edit("eigenvalues", [3.0, 2.0, 1.0]), r"`state\['eigenvalues'\]` must be an array"),
]


@pytest.mark.parametrize(("tamper", "match"), TAMPERED)
def test_tampered_checkpoints_are_refused_naming_the_entry(tmp_path, tamper, match):
    from lowrank_online import load_state, save_state

    save_state(tmp_path / "ema.npz", _saved())
    state = load_state(tmp_path / "ema.npz")
    tamper(state)
    with pytest.raises(ValueError, match=match):
        LowRankEMA.from_state_dict(state)


def test_a_checkpoint_that_is_not_a_dict_is_a_type_error():
    with pytest.raises(TypeError, match="`state` must be a dict"):
        LowRankEMA.from_state_dict([("rank", 3)])


def test_format_1_checkpoints_still_load():
    state = _saved()
    for key in ("format", "max_failures", "skipped_updates"):
        del state[key]
    restored = LowRankEMA.from_state_dict(state)
    assert restored.max_failures == 10 and restored.skipped_updates == 0 and restored.n_updates == 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_save_load_save_load_is_bit_exact_on_every_backend(tmp_path, xp, dtype):
    from lowrank_online import load_state, save_state

    rng = np.random.default_rng(15)
    tracker = LowRankEMA(3, 0.9, reorthonormalize_every=2, max_failures=4)
    for _ in range(3):
        tracker.update(asarray(xp, rng.standard_normal((D, 2)), dtype))
    tracker.skipped_updates = 2
    save_state(tmp_path / "a.npz", tracker.state_dict())
    first = LowRankEMA.from_state_dict(load_state(tmp_path / "a.npz"), xp=xp)
    save_state(tmp_path / "b.npz", first.state_dict())
    second = LowRankEMA.from_state_dict(load_state(tmp_path / "b.npz"), xp=xp)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    for restored in (first, second):
        assert restored.eigenvectors.dtype == tracker.eigenvectors.dtype
        np.testing.assert_array_equal(to_np(restored.eigenvectors), to_np(tracker.eigenvectors))
        np.testing.assert_array_equal(to_np(restored.eigenvalues), to_np(tracker.eigenvalues))
        assert (restored.rank, restored.decay, restored.n_updates, restored.reorthonormalize_every,
                restored.max_failures, restored.skipped_updates) == (3, 0.9, 3, 2, 4, 2)
