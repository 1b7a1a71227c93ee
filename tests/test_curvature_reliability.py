"""No failure kills a run and no finite input poisons a state: fault injection and poisoning, every method."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import asarray, to_np

from lowrank_online import DecompositionError
from lowrank_online.curvature import METHODS, KFACPreconditioner


def _namespace(name):
    if name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp
    else:
        import array_api_compat.numpy as xp
    return xp


def _batch(rng, xp, dtype="float64"):
    a = rng.standard_normal((12, 7)) * 0.8 ** np.arange(7)
    g = rng.standard_normal((12, 5)) * 0.8 ** np.arange(5)
    return asarray(xp, a, dtype), asarray(xp, g, dtype)


def _snapshot(pre):
    return {k: np.array(to_np(v)) for k, v in _flat(pre.state_dict()).items() if hasattr(v, "shape")}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def _fault(kind, original):
    """``original`` made to raise, or to return NaN."""

    def broken(*args, **kwargs):
        if kind == "raise":
            raise np.linalg.LinAlgError("injected failure")
        out = original(*args, **kwargs)
        if not isinstance(out, tuple):
            return out * float("nan")
        poisoned = [x * float("nan") for x in out]
        return out._make(poisoned) if hasattr(out, "_make") else type(out)(poisoned)  # torch.return_types

    return broken


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["raise", "nan"])
@pytest.mark.parametrize("method", METHODS)
def test_a_failing_decomposition_skips_the_update_and_keeps_the_state(monkeypatch, backend, kind, method):
    xp = _namespace(backend)
    rng = np.random.default_rng(0)
    pre = KFACPreconditioner(method, rank=3, T_inv=1, max_failures=3)
    for _ in range(2):
        pre.update("fc", *_batch(rng, xp))
        pre.step()
    grad = asarray(xp, rng.standard_normal((5, 7)))
    step_before = to_np(pre.precondition("fc", grad))
    before = _snapshot(pre)  # after the solve, which may have cached a solver in the state
    batch = _batch(rng, xp)
    with monkeypatch.context() as m:
        for name in ("eigh", "svd", "qr"):
            m.setattr(xp.linalg, name, _fault(kind, getattr(xp.linalg, name)))
        with pytest.warns(RuntimeWarning, match="curvature update skipped at step 2"):
            pre.update("fc", *batch)
        _assert_same(before, _snapshot(pre))
        np.testing.assert_array_equal(to_np(pre.precondition("fc", grad)), step_before)
        pre.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per layer: the second skip is silent
            pre.update("fc", *batch)
        assert pre.skipped_updates["fc"] == 2 and pre.layer_state("fc").skipped_updates == 2
        with pytest.raises(DecompositionError, match="3 consecutive curvature updates failed"):
            pre.update("fc", *batch)
    pre.update("fc", *batch)  # the stream resumes once the decompositions work again
    assert np.all(np.isfinite(to_np(pre.precondition("fc", grad))))


@pytest.mark.parametrize("method", METHODS)
def test_eigh_failing_alone_falls_back_to_the_svd(monkeypatch, method):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(1)
    batches = [_batch(rng, xp) for _ in range(3)]
    grad = rng.standard_normal((5, 7))
    ref = KFACPreconditioner(method, rank=3, T_inv=1)
    for a, g in batches:
        ref.update("fc", a, g)
        ref.step()
    pre = KFACPreconditioner(method, rank=3, T_inv=1)
    monkeypatch.setattr(xp.linalg, "eigh", _fault("raise", xp.linalg.eigh))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for a, g in batches:
            pre.update("fc", a, g)
            pre.step()
    monkeypatch.undo()
    assert pre.skipped_updates == {}
    np.testing.assert_allclose(pre.precondition("fc", grad), ref.precondition("fc", grad), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("dtype", "scale"), [("float64", 1e200), ("float32", 1e25)])
@pytest.mark.parametrize("method", METHODS)
def test_a_huge_finite_batch_never_poisons_the_state(method, dtype, scale):
    """A batch that passes validation but overflows the factors is skipped with a warning (or,
    for float32, computed in float64 when the result fits float32); later updates are normal."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(2)
    pre = KFACPreconditioner(method, rank=3, T_inv=1)
    a, g = _batch(rng, xp, dtype)
    pre.update("fc", a, g)
    pre.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre.update("fc", a * scale, g)
    pre.step()
    skipped = pre.skipped_updates.get("fc", 0)
    assert skipped in (0, 1)
    if skipped:
        assert any("curvature update skipped" in str(w.message) for w in caught)
    for _ in range(2):
        pre.update("fc", *_batch(rng, xp, dtype))
        pre.step()
    step = pre.precondition("fc", asarray(xp, rng.standard_normal((5, 7)), dtype))
    assert np.all(np.isfinite(to_np(step)))
    assert pre.skipped_updates.get("fc", 0) == skipped  # the later updates went through
    if dtype == "float64":
        assert skipped == 1  # 1e400 does not exist in float64: always a skip


def test_float32_statistics_that_overflow_are_retried_in_float64():
    """tkfac's delta = E[|a|^2 |g|^2] overflows float32 at |a| ~ 1e10; its factors do not."""
    rng = np.random.default_rng(3)
    a, g = (x.astype(np.float32) for x in (rng.standard_normal((12, 7)), rng.standard_normal((12, 5))))
    pre = KFACPreconditioner("kfac", T_inv=1)
    pre.update("fc", a, g)
    pre.update("fc", a * np.float32(3e18), g)  # a^T a ~ 1e37: representable, but a^T a / N... fits
    assert pre.skipped_updates == {}
    assert pre.layer_state("fc").state.A.dense.dtype == np.float32


def test_a_schedule_error_is_input_not_a_skipped_update():
    rng = np.random.default_rng(4)
    a, g = rng.standard_normal((6, 7)), rng.standard_normal((6, 5))
    pre = KFACPreconditioner("bkfac", held_rank=lambda k: -1)
    with pytest.raises(ValueError, match=r"`held_rank\(0\)`"):
        pre.update("fc", a, g)
    assert pre.skipped_updates == {} and pre.layers == []


@pytest.mark.parametrize("method", ["deflation", "lanczos", "kfac-corrected"])
def test_a_kronecker_sum_that_cannot_be_solved_keeps_the_previous_solver(monkeypatch, method):
    import lowrank_online.curvature.families.kronsum as family

    rng = np.random.default_rng(5)
    pre = KFACPreconditioner(method, T_inv=1)
    pre.update("fc", *_batch(rng, np))
    grad = rng.standard_normal((5, 7))
    before = pre.precondition("fc", grad)
    pre.step()
    pre.update("fc", *_batch(rng, np))  # a new frozen sum: the next solve needs a new solver

    def unsolvable(*args, **kwargs):
        raise ValueError("A ⊗ B + C ⊗ D is singular to working precision")

    monkeypatch.setattr(family, "KronSumInverse", unsolvable)
    with pytest.warns(RuntimeWarning, match="the previous solver is kept"):
        np.testing.assert_array_equal(pre.precondition("fc", grad), before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre.precondition("fc", grad)  # kept, not retried per step
    monkeypatch.undo()
    fresh = KFACPreconditioner(method, T_inv=1)
    fresh.update("fc", *_batch(np.random.default_rng(5), np))
    fresh.step()
    with pytest.raises(DecompositionError, match="cannot be solved"):
        monkeypatch.setattr(family, "KronSumInverse", unsolvable)
        fresh.precondition("fc", grad)
