"""KFACPreconditioner against dense Kronecker-factored references."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from _helpers import asarray, to_np

from lowrank_online import DecompositionError, load_state, reigh, save_state
from lowrank_online.curvature import METHODS, KFACPreconditioner, factors, kl_clip_scale

FAMILY = ["kfac", "rkfac", "bkfac", "brkfac", "bkfacc", "auto"]


def _stream(rng, n_batches, N, d_a, d_g, scale_decay=0.85):
    """Statistics with decaying spectra, like a layer's activations and gradients."""
    Ba = rng.standard_normal((d_a, d_a)) * scale_decay ** np.arange(d_a)
    Bg = rng.standard_normal((d_g, d_g)) * scale_decay ** np.arange(d_g)
    return [(rng.standard_normal((N, d_a)) @ Ba.T, rng.standard_normal((N, d_g)) @ Bg.T) for _ in range(n_batches)]


def _dense_factors(batches, rho):
    A = G = None
    for a, g in batches:
        N = a.shape[0]
        A = a.T @ a / N if A is None else rho * A + (1 - rho) * a.T @ a / N
        G = g.T @ g / N if G is None else rho * G + (1 - rho) * g.T @ g / N
    return A, G


def _kron_step(A, G, lam_a, lam_g, grad):
    """Row-major convention: vec(S) = ((G + lg I) kron (A + la I))^{-1} vec(grad)."""
    d_g, d_a = grad.shape
    F = np.kron(G + lam_g * np.eye(d_g), A + lam_a * np.eye(d_a))
    return np.linalg.solve(F, grad.reshape(-1)).reshape(d_g, d_a)


@pytest.mark.parametrize("mode", ["relative", "pi", "absolute"])
def test_kfac_equals_dense_damped_kronecker_solve(xp, dtype_name, mode):
    rng = np.random.default_rng(0)
    d_a, d_g, N, rho = 9, 6, 20, 0.9
    batches = _stream(rng, 4, N, d_a, d_g)
    pre = KFACPreconditioner("kfac", decay=rho, damping=0.05, damping_mode=mode, T_inv=1, T_updt=1)
    for a, g in batches:
        pre.update("fc", asarray(xp, a, dtype_name), asarray(xp, g, dtype_name))
        pre.step()
    A, G = _dense_factors(
        [(np.asarray(a, dtype_name).astype(float), np.asarray(g, dtype_name).astype(float)) for a, g in batches], rho
    )
    wa, wg = np.linalg.eigvalsh(A), np.linalg.eigvalsh(G)
    if mode == "relative":
        lam = (0.05 * wa[-1], 0.05 * wg[-1])
    elif mode == "absolute":
        lam = (0.05, 0.05)
    else:
        pi = math.sqrt((np.trace(A) / d_a) / (np.trace(G) / d_g))
        lam = (pi * math.sqrt(0.05), math.sqrt(0.05) / pi)
    np.testing.assert_allclose(pre.dampings("fc"), lam, rtol=1e-10 if dtype_name == "float64" else 1e-4)
    grad = rng.standard_normal((d_g, d_a))
    step = pre.precondition("fc", asarray(xp, grad, dtype_name))
    ref = _kron_step(A, G, *lam, np.asarray(grad, dtype_name).astype(float))
    tol = 1e-10 if dtype_name == "float64" else 2e-3
    np.testing.assert_allclose(to_np(step), ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("method", ["rkfac", "bkfac", "brkfac", "bkfacc", "auto"])
def test_full_rank_methods_give_the_kfac_step(xp, method):
    rng = np.random.default_rng(1)
    d_a, d_g, N = 10, 7, 12
    batches = _stream(rng, 6, N, d_a, d_g)
    ref = KFACPreconditioner("kfac", T_inv=1, continuation=False)
    pre = KFACPreconditioner(method, rank=32, T_inv=1, T_rsvd=2, T_corct=2, continuation=False)
    for a, g in batches:
        for p in (ref, pre):
            p.update("fc", asarray(xp, a), asarray(xp, g))
            p.step()
    grad = asarray(xp, rng.standard_normal((d_g, d_a)))
    np.testing.assert_allclose(
        to_np(pre.precondition("fc", grad)), to_np(ref.precondition("fc", grad)), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("method", FAMILY)
def test_factored_application_equals_the_full_step(xp, method):
    rng = np.random.default_rng(2)
    d_a, d_g, N = 40, 12, 8
    pre = KFACPreconditioner(method, rank=6)
    for a, g in _stream(rng, 3, N, d_a, d_g):
        pre.update("fc", asarray(xp, a), asarray(xp, g))
        pre.step()
    G, A = rng.standard_normal((N, d_g)) / N, rng.standard_normal((N, d_a))
    Gt, At = pre.precondition_factored("fc", asarray(xp, G), asarray(xp, A))
    full = pre.precondition("fc", asarray(xp, G.T @ A))
    assert Gt.shape == (N, d_g) and At.shape == (N, d_a)
    np.testing.assert_allclose(to_np(Gt).T @ to_np(At), to_np(full), rtol=1e-10, atol=1e-12)


def _fitted(xp, method, seed):
    """A preconditioner after three batches on an 11 x 7 layer, a gradient and its step."""
    rng = np.random.default_rng(seed)
    d_a, d_g, N = 11, 7, 9
    pre = KFACPreconditioner(method, rank=4)
    for a, g in _stream(rng, 3, N, d_a, d_g):
        pre.update("fc", asarray(xp, a), asarray(xp, g))
        pre.step()
    grad = rng.standard_normal((d_g, d_a))
    return pre, grad, to_np(pre.precondition("fc", asarray(xp, grad)))


@pytest.mark.parametrize("method", METHODS)
def test_in_place_application_equals_the_allocating_one(xp, method):
    """``overwrite_grad=True`` (what lowrank_online.torch.KFAC uses) gives the same step, and
    ``check_finite=False`` only skips the check: a NaN gradient then gives a non-finite step."""
    pre, grad, ref = _fitted(xp, method, seed=3)
    got = pre.precondition("fc", asarray(xp, grad), overwrite_grad=True, check_finite=False)
    np.testing.assert_allclose(to_np(got), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    bad = grad.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="`grad` contains NaN"):
        pre.precondition("fc", asarray(xp, bad))
    assert not np.isfinite(to_np(pre.precondition("fc", asarray(xp, bad), check_finite=False))).all()
    for flag in ("overwrite_grad", "check_finite"):
        with pytest.raises(TypeError, match=f"`{flag}` must be True or False"):
            pre.precondition("fc", asarray(xp, grad), **{flag: "yes"})


@pytest.mark.parametrize("method", METHODS)
def test_column_blocks_give_the_step_of_the_whole_gradient(xp, method):
    """precondition_blocks on [W b] given as W and b (what lowrank_online.torch.KFAC passes)
    equals precondition of the assembled matrix; the K-FAC family writes into the blocks."""
    pre, grad, ref = _fitted(xp, method, seed=4)
    blocks = [asarray(xp, grad[:, :8]), asarray(xp, grad[:, 8:10]), asarray(xp, grad[:, 10:])]
    out = pre.precondition_blocks("fc", blocks)
    got = np.concatenate([to_np(Y) for Y in out], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    if method in ("kfac", "rkfac", "bkfac", "brkfac", "bkfacc", "auto"):
        np.testing.assert_allclose(np.concatenate([to_np(X) for X in blocks], axis=1), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="11 columns in all"):
        pre.precondition_blocks("fc", [asarray(xp, grad[:, :5])])
    with pytest.raises(ValueError, match=r"`blocks\[1\]` of layer 'fc' must have 7 rows"):
        pre.precondition_blocks("fc", [asarray(xp, grad[:, :5]), asarray(xp, np.ones((6, 6)))])
    with pytest.raises(TypeError, match="`blocks` must be a non-empty list"):
        pre.precondition_blocks("fc", asarray(xp, grad))
    bad = grad.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"`blocks(\[0\])?` contains? NaN"):
        pre.precondition_blocks("fc", [asarray(xp, bad)])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_column_blocks_refuse_every_non_finite_entry_and_keep_the_blocks(xp, value):
    """The K-FAC family tests the blocks on their projection onto the input factor's
    eigenvectors: an entry in a column where every eigenvector is exactly zero (an input that
    never varies), in the bias block, or anywhere else is refused, before a block is written."""
    rng = np.random.default_rng(8)
    d_in, d_out, N = 9, 6, 40
    a = rng.standard_normal((N, d_in))
    a[:, 3] = 0.0  # never active: row 3 of the input factor's eigenvectors is zero
    pre = KFACPreconditioner("bkfac", rank=4)
    for _ in range(2):
        pre.update("fc", asarray(xp, a), asarray(xp, rng.standard_normal((N, d_out))))
        pre.step()
    grad = rng.standard_normal((d_out, d_in))
    for i, j in [(0, 3), (5, 3), (2, 0), (4, 8), (1, 5)]:
        bad = grad.copy()
        bad[i, j] = value
        blocks = [asarray(xp, bad[:, :8].copy()), asarray(xp, bad[:, 8:].copy())]  # [W b]
        with pytest.raises(ValueError, match="`blocks` contain NaN or infinity"):
            pre.precondition_blocks("fc", blocks)
        got = np.concatenate([to_np(X) for X in blocks], axis=1)
        np.testing.assert_array_equal(got, bad)
    assert np.isfinite(np.concatenate([to_np(Y) for Y in pre.precondition_blocks("fc", [asarray(xp, grad)])], 1)).all()


def test_pure_bkfac_never_allocates_a_d_by_d_matrix():
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(3)
    d_a, d_g, N, r = 3000, 2000, 16, 8
    pre = KFACPreconditioner("bkfac", rank=r)
    batches = [(xp.asarray(rng.standard_normal((N, d_a))), xp.asarray(rng.standard_normal((N, d_g)))) for _ in range(3)]
    G, A = xp.asarray(rng.standard_normal((N, d_g))), xp.asarray(rng.standard_normal((N, d_a)))
    tracemalloc.start()
    for a, g in batches:
        pre.update("wide", a, g)
        pre.precondition_factored("wide", G, A)
        pre.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # one d_g x d_g float64 matrix alone would be 32 MB; the B-updates need a few d x (r + N) blocks
    assert peak < 40 * d_a * (r + N) * 8, f"peak {peak / 1e6:.1f} MB"
    assert pre.layer_state("wide").state.A.dense is None


def test_auto_uses_b_updates_only_where_they_pay():
    rng = np.random.default_rng(4)
    pre = KFACPreconditioner("auto", rank=16)
    pre.update("fc", rng.standard_normal((8, 200)), rng.standard_normal((8, 10)))
    kinds = pre.layer_state("fc").kinds
    assert kinds["A"] == "brand" and kinds["G"] == "reigh"  # 16 + 8 < 200, not < 10


def test_brkfac_refresh_then_b_update_follows_algorithm_5():

    rng = np.random.default_rng(5)
    d, N, r = 30, 4, 5
    batches = _stream(rng, 5, N, d, 3)
    pre = KFACPreconditioner("brkfac", rank=r, T_rsvd=4, decay=0.9, seed=3)
    for a, g in batches[:4]:
        pre.update("fc", a, g)
        pre.step()
    before = pre.layer_state("fc").state.A
    seed = (pre.config.seed, 0, 0)  # (base seed, layer index, factor A)
    a = batches[4][0]
    pre.update("fc", a, batches[4][1])  # step 4: refresh from the EA before this batch, then B-update
    R = reigh(before.dense, r, oversample=10, n_iter=4, seed=np.random.default_rng([*seed, 4]))
    held = 0.9 * (R.eigenvectors * R.eigenvalues) @ R.eigenvectors.T + 0.1 * a.T @ a / N
    after = pre.layer_state("fc").state.A
    np.testing.assert_allclose((after.eigenvectors * after.eigenvalues) @ after.eigenvectors.T, held, atol=1e-10)


def test_bkfacc_correction_reduces_the_factor_error():
    rng = np.random.default_rng(6)
    d, N, r = 60, 4, 8
    batches = _stream(rng, 12, N, d, 3, scale_decay=0.93)
    plain = KFACPreconditioner("bkfac", rank=r, decay=0.9)
    corrected = KFACPreconditioner("bkfacc", rank=r, decay=0.9, T_corct=11, phi_crc=0.5)
    for a, g in batches:
        for p in (plain, corrected):
            p.update("fc", a, g)
            p.step()
    A_true, _ = _dense_factors(batches, 0.9)

    def err(p):
        s = p.layer_state("fc").state.A
        return np.linalg.norm(A_true - (s.eigenvectors * s.eigenvalues) @ s.eigenvectors.T)

    assert err(corrected) < err(plain)


def test_schedules_and_inverse_period():
    rng = np.random.default_rng(7)
    pre = KFACPreconditioner("rkfac", rank=lambda k: 4 + k, T_inv=3)
    seen = []
    for a, g in _stream(rng, 7, 6, 30, 5):
        pre.update("fc", a, g)
        seen.append(pre.layer_state("fc").state.A.eigenvalues.shape[0])
        pre.step()
    # recomputed at steps 0, 3, 6 only, with the scheduled rank
    assert seen == [4, 4, 4, 7, 7, 7, 10]


def test_kl_clip_scale_bounds_the_predicted_kl():
    import array_api_compat.numpy as xp

    steps = [np.full((2, 3), 2.0), np.full((4,), 1.0)]
    grads = [np.full((2, 3), 1.0), np.full((4,), 3.0)]
    total = 12.0 + 12.0
    s = kl_clip_scale(steps, grads, lr=0.5, kappa=1e-2, xp=xp)
    assert s == pytest.approx(math.sqrt(1e-2 / (0.25 * total)))
    assert 0.25 * s * s * total == pytest.approx(1e-2)
    assert kl_clip_scale(steps, grads, lr=1e-3, kappa=1.0, xp=xp) == 1.0


# --------------------------------------------------------------------------------------------
# bad input and failures
# --------------------------------------------------------------------------------------------
def _snapshot(pre):
    state = pre.state_dict()
    return {name: {side: {k: np.array(to_np(v)) for k, v in lay["state"][side].items() if hasattr(v, "shape")}
                   for side in ("A", "G")} for name, lay in state["layers"].items()}, state["steps"]


@pytest.mark.parametrize(
    ("a_shape", "g_shape", "fill", "error", "match"),
    [
        ((8, 11), (8, 5), 1.0, ValueError, "layer 'fc' has d_in=10, d_out=5"),
        ((8, 10), (7, 5), 1.0, ValueError, "`a` has 8 rows but `g` has 7"),
        ((8, 10), (8, 5), np.nan, ValueError, "contains NaN"),
        ((8, 10, 1), (8, 5), 1.0, ValueError, "`a` must be 2-D"),
    ],
)
def test_bad_statistics_leave_the_state_untouched(xp, a_shape, g_shape, fill, error, match):
    rng = np.random.default_rng(8)
    pre = KFACPreconditioner("bkfac", rank=4)
    pre.update("fc", asarray(xp, rng.standard_normal((8, 10))), asarray(xp, rng.standard_normal((8, 5))))
    before = _snapshot(pre)
    with pytest.raises(error, match=match):
        pre.update("fc", asarray(xp, np.full(a_shape, fill)), asarray(xp, np.full(g_shape, 1.0)))
    after = _snapshot(pre)
    assert before[1] == after[1]
    for side in ("A", "G"):
        for key, value in before[0]["fc"][side].items():
            np.testing.assert_array_equal(after[0]["fc"][side][key], value)


def test_bad_names_methods_and_gradients_are_refused():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="`method` must be one of"):
        KFACPreconditioner("kfca")
    with pytest.raises(ValueError, match=r"`layer_methods\['fc'\]` must be one of"):
        KFACPreconditioner("kfac", layer_methods={"fc": "nope"})
    with pytest.raises(ValueError, match="`damping_mode`"):
        KFACPreconditioner("kfac", damping_mode="loud")
    pre = KFACPreconditioner("kfac")
    with pytest.raises(ValueError, match="no statistics for layer 'fc'"):
        pre.precondition("fc", np.ones((3, 4)))
    pre.update("fc", rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match=r"must have shape \(3, 4\)"):
        pre.precondition("fc", np.ones((4, 3)))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="`grad` is a torch array"):
        pre.precondition("fc", torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="layer 'fc' holds numpy arrays"):
        pre.update("fc", torch.ones(5, 4, dtype=torch.float64), torch.ones(5, 3, dtype=torch.float64))


def test_failed_decomposition_warns_and_keeps_the_layer(monkeypatch):
    rng = np.random.default_rng(10)
    pre = KFACPreconditioner("kfac")
    pre.update("fc", rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    before = _snapshot(pre)

    def broken(*args, **kwargs):
        raise DecompositionError("eigh did not converge")

    monkeypatch.setattr(factors, "update", broken)
    with pytest.warns(RuntimeWarning, match="curvature update skipped at step 0: eigh did not converge"):
        pre.update("fc", rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    after = _snapshot(pre)
    np.testing.assert_array_equal(after[0]["fc"]["A"]["dense"], before[0]["fc"]["A"]["dense"])


@pytest.mark.parametrize("method", FAMILY)
def test_state_round_trip_through_npz_resumes_bit_exactly(tmp_path, method):
    rng = np.random.default_rng(11)
    batches = _stream(rng, 8, 6, 25, 7)
    kwargs = {"rank": 5, "T_inv": 2, "T_rsvd": 3, "T_corct": 3, "seed": 4}
    one = KFACPreconditioner(method, **kwargs)
    for a, g in batches[:4]:
        one.update("fc", a, g)
        one.step()
    save_state(tmp_path / "pre.npz", one.state_dict())
    two = KFACPreconditioner(method, **kwargs)
    two.load_state_dict(load_state(tmp_path / "pre.npz"))
    grad = rng.standard_normal((7, 25))
    for a, g in batches[4:]:
        for p in (one, two):
            p.update("fc", a, g)
            p.step()
        np.testing.assert_array_equal(two.precondition("fc", grad), one.precondition("fc", grad))


def test_loading_a_state_for_another_method_is_refused():
    rng = np.random.default_rng(12)
    pre = KFACPreconditioner("kfac")
    pre.update("fc", rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="used method 'kfac'"):
        KFACPreconditioner("bkfac").load_state_dict(pre.state_dict())
