"""The curvature adapter's parts: registry, configuration, damping policy, pure families, inspection, checkpoints."""

from __future__ import annotations

import ast
import dataclasses
import math
import pathlib

import numpy as np
import pytest
from _helpers import asarray, to_np

from lowrank_online import load_state, save_state
from lowrank_online.curvature import METHODS, CurvatureConfig, KFACPreconditioner, LayerState, registry
from lowrank_online.curvature import factors as factor_module
from lowrank_online.curvature.damping import Damping, Spectrum, factor_dampings
from lowrank_online.curvature.families import LayerShape, build
from lowrank_online.curvature.families.ekfac import carry_scalings

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lowrank_online"
DATA = pathlib.Path(__file__).resolve().parent / "data"


def _stream(rng, n, N=12, d_a=7, d_g=5):
    Ba = rng.standard_normal((d_a, d_a)) * 0.8 ** np.arange(d_a)
    Bg = rng.standard_normal((d_g, d_g)) * 0.8 ** np.arange(d_g)
    return [(rng.standard_normal((N, d_a)) @ Ba.T, rng.standard_normal((N, d_g)) @ Bg.T) for _ in range(n)]


def _fed(method, batches, **options):
    pre = KFACPreconditioner(method, **options)
    for a, g in batches:
        pre.update("fc", a, g)
        pre.step()
    return pre


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def test_registry_lists_thirteen_methods_each_with_a_family():
    assert len(METHODS) == 13 and len(set(METHODS)) == 13
    for name in METHODS:
        spec = registry.lookup(name)
        assert spec.family in ("kfac", "ekfac", "pair", "kronsum")
        assert all(k in ("eigh", "reigh", "brand", "by-cost") for k in spec.kinds)
        assert spec.period in ("T_inv", "T_brand")


def test_unknown_methods_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"`method` must be one of \['auto', 'bkfac'"):
        registry.lookup("kfca")
    with pytest.raises(ValueError, match="`layer_methods\\['x'\\]` must be one of"):
        CurvatureConfig(layer_methods={"x": 3})


def _method_comparisons(path: pathlib.Path) -> list[str]:
    """Comparisons of a value with a method-name literal (``== "bkfac"``, ``in ("kfac", ...)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            for item in items:
                if isinstance(item, ast.Constant) and item.value in METHODS:
                    found.append(f"{path.name}:{node.lineno} {item.value!r}")
    return found


def test_the_method_name_is_compared_in_the_registry_only():
    # the adapter and what sits above it (the Kronecker toolkit's kpsvd has a `method` of its own)
    paths = [
        *(PACKAGE / "curvature").rglob("*.py"),
        *(PACKAGE / "nn").rglob("*.py"),
        *(PACKAGE / "torch").rglob("*.py"),
        *PACKAGE.glob("*.py"),
    ]
    offenders = []
    for path in paths:
        if path.name != "registry.py":
            offenders += _method_comparisons(path)
    assert offenders == []


def test_no_import_error_is_swallowed_by_the_adapter():
    """0.1.0 built its method table under ``except ImportError``: a bug in one module silently
    shrank it from 13 methods to 6. Every ImportError handler now re-raises."""
    swallowed = []
    for path in (PACKAGE / "curvature").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and "ImportError" in ast.unparse(node.type or ast.Constant(None)):
                if not any(isinstance(n, ast.Raise) for n in ast.walk(node)):
                    swallowed.append(f"{path.name}:{node.lineno}")
    assert swallowed == []


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"decay": 0.0}, ValueError, r"`decay` must be a finite real number in \(0, 1\]"),
        ({"decay": "high"}, TypeError, "`decay` must be"),
        ({"rank": 0}, ValueError, "`rank` must be an integer in \\[1, inf\\) or a callable"),
        ({"rank": 2.5}, TypeError, "`rank`"),
        ({"continuation": "no"}, TypeError, "`continuation` must be a bool"),
        ({"damping": float("nan")}, ValueError, "`damping`"),
        ({"damping_mode": "loud"}, ValueError, "`damping_mode` must be one of"),
        ({"gradient_damping": -1.0}, ValueError, "`gradient_damping`"),
        ({"damping_adaptation": "fast"}, ValueError, "`damping_adaptation`"),
        ({"kl_clip": 0.0}, ValueError, "`kl_clip`"),
        ({"T_inv": 0}, ValueError, "`T_inv`"),
        ({"inv_dtype": "float16"}, ValueError, "`inv_dtype`"),
        ({"seed": -1}, ValueError, "`seed`"),
        ({"held_rank": True}, TypeError, "`held_rank`"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, error, match):
    with pytest.raises(error, match=match):
        KFACPreconditioner("bkfac", **options)


def test_the_configuration_is_frozen_and_shared_by_value():
    pre = KFACPreconditioner("bkfac", layer_methods={"fc": "kfac"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.config.rank = 3
    with pytest.raises(TypeError):
        pre.config.layer_methods["fc"] = "rkfac"
    assert pre.config.method_of("fc") == "kfac" and pre.config.method_of("other") == "bkfac"


def test_a_schedule_returning_a_bad_value_is_refused_at_that_step():
    rng = np.random.default_rng(0)
    (a, g), = _stream(rng, 1)
    pre = KFACPreconditioner("rkfac", rank=lambda k: 3 if k < 1 else 0.5)
    pre.update("fc", a, g)
    pre.step()
    with pytest.raises(ValueError, match=r"`rank\(1\)` must be an integer"):
        pre.precondition("fc", np.ones((5, 7)))
    pre = KFACPreconditioner("kfac", damping=lambda k: float("nan"))
    pre.update("fc", a, g)
    with pytest.raises(ValueError, match=r"`damping\(0\)`"):
        pre.precondition("fc", np.ones((5, 7)))


# --------------------------------------------------------------------------------------------
# damping: one function, against dense references
# --------------------------------------------------------------------------------------------
def _spectrum_dense(M, r=None, continuation=False):
    w = np.sort(np.linalg.eigvalsh(M))[::-1]
    d = w.shape[0]
    if r is not None and r < d:
        kept = w[:r]
        trace = kept.sum() + ((d - r) * kept[-1] if continuation else 0.0)
        return kept[0], trace, d
    return w[0], w.sum(), d


@pytest.mark.parametrize("mode", ["relative", "pi", "absolute"])
def test_damping_modes_match_their_definitions_on_dense_factors(mode):
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((20, 6)), rng.standard_normal((20, 4)) * 3
    A, G = X.T @ X / 20, Y.T @ Y / 20
    (ta, sa, da), (tg, sg, dg) = _spectrum_dense(A), _spectrum_dense(G)
    got = factor_dampings(mode, 0.05, [Spectrum(ta, sa, da), Spectrum(tg, sg, dg)], floor=1e-12)
    if mode == "relative":
        want = (0.05 * ta, 0.05 * tg)
    elif mode == "absolute":
        want = (0.05, 0.05)
    else:
        pi = math.sqrt((np.trace(A) / 6) / (np.trace(G) / 4))
        want = (pi * math.sqrt(0.05), math.sqrt(0.05) / pi)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # one spectrum (EKFAC): relative takes its top, the others the value
    single = factor_dampings(mode, 0.05, [Spectrum(ta, sa, da)], floor=1e-12)
    np.testing.assert_allclose(single, (0.05 * ta,) if mode == "relative" else (0.05,), rtol=1e-12)


def test_floors_raise_dampings_to_their_bounds():
    A, G = Spectrum(4.0, 8.0, 4), Spectrum(1e-9, 1e-9, 2)
    assert factor_dampings("relative", 0.1, [A, G], floor=1e-6) == (0.4, 1e-6)
    lam = factor_dampings("relative", 0.1, [A, G], floor=1e-6, total_floor=1.0)
    assert lam[0] * lam[1] == pytest.approx(1.0) and lam[0] / lam[1] == pytest.approx(0.4 / 1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_every_family_damps_with_the_one_function(method, monkeypatch):
    calls = []
    from lowrank_online.curvature import damping as damping_module

    original = damping_module.factor_dampings

    def spy(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    rng = np.random.default_rng(2)
    pre = _fed(method, _stream(rng, 2), rank=3, damping_mode="pi")
    for module in ("kfac", "ekfac", "pair", "kronsum"):
        monkeypatch.setattr(f"lowrank_online.curvature.families.{module}.factor_dampings", spy)
    pre.precondition("fc", np.ones((5, 7)))
    assert calls and set(calls) == {"pi"}


def test_low_rank_traces_follow_the_continuation_convention():
    rng = np.random.default_rng(3)
    batches = _stream(rng, 4, N=3, d_a=12, d_g=4)
    pre = _fed("bkfac", batches, rank=4, damping=0.01, damping_mode="pi")
    info = pre.layer_state("fc")
    L = to_np(info.state.A.eigenvalues)[:4]
    trace_a = L.sum() + (12 - 4) * L[-1]
    LG = to_np(info.state.G.eigenvalues)  # rank 4 of d_g = 4: full
    pi = math.sqrt((trace_a / 12) / (LG.sum() / 4))
    np.testing.assert_allclose(pre.dampings("fc"), (pi * 0.1, 0.1 / pi), rtol=1e-10)


def test_the_gradient_floor_bounds_the_product_of_the_dampings():
    rng = np.random.default_rng(4)
    batches = _stream(rng, 3)
    plain = _fed("kfac", batches, T_inv=1)
    floored = _fed("kfac", batches, gradient_damping=10.0, T_inv=1)
    grad = rng.standard_normal((5, 7))
    lam0, lam1 = floored.dampings("fc", grad)
    assert lam0 * lam1 == pytest.approx(10.0 * np.sum(grad * grad))
    assert lam0 / lam1 == pytest.approx(np.divide(*plain.dampings("fc")))
    # the step is the K-FAC step with those dampings; the factored form agrees
    A, G = (to_np(getattr(floored.layer_state("fc").state, s).dense) for s in ("A", "G"))
    ref = np.linalg.solve(np.kron(G + lam1 * np.eye(5), A + lam0 * np.eye(7)), grad.reshape(-1)).reshape(5, 7)
    np.testing.assert_allclose(floored.precondition("fc", grad), ref, rtol=1e-9)
    Gf, Af = rng.standard_normal((9, 5)), rng.standard_normal((9, 7))
    Gt, At = floored.precondition_factored("fc", Gf, Af)
    np.testing.assert_allclose(Gt.T @ At, floored.precondition("fc", Gf.T @ Af), rtol=1e-9)


def test_levenberg_marquardt_moves_the_damping_with_the_reduction_ratio(tmp_path):
    rng = np.random.default_rng(5)
    pre = _fed("kfac", _stream(rng, 2), damping_adaptation="lm", gradient_damping=0.5)
    base = pre.damping_value()
    assert pre.adapt_damping(-0.9, -1.0) == 1.0  # better than 3/4 of predicted, but 1 is the floor
    assert pre.adapt_damping(+0.1, -1.0) == pytest.approx(20 / 19)  # the loss rose: more damping
    assert pre.adapt_damping(-0.5, -1.0) == pytest.approx(20 / 19)  # in between: unchanged
    assert pre.adapt_damping(float("nan"), -1.0) == pytest.approx((20 / 19) ** 2)
    assert pre.adapt_damping(-0.8, -1.0) == pytest.approx(20 / 19)  # gives it back
    assert pre.damping_value() == Damping(base.value * 20 / 19, base.gradient * 20 / 19)
    for _ in range(1000):
        pre.adapt_damping(1.0, -1.0)
    assert pre.adapt_damping(1.0, -1.0) == 1e4
    save_state(tmp_path / "p.npz", pre.state_dict())
    other = KFACPreconditioner("kfac", damping_adaptation="lm", gradient_damping=0.5)
    other.load_state_dict(load_state(tmp_path / "p.npz"))
    assert other.damping_value() == pre.damping_value()
    with pytest.raises(ValueError, match="damping_adaptation='lm'"):
        KFACPreconditioner("kfac").adapt_damping(0.0, -1.0)


def test_predicted_change_is_the_damped_quadratic_model():
    rng = np.random.default_rng(6)
    batches = _stream(rng, 2)
    pre = _fed("kfac", batches, damping=0.1, T_inv=1)
    grad = rng.standard_normal((5, 7))
    step = pre.precondition("fc", grad)
    lam_a, lam_g = pre.dampings("fc")
    A, G = (to_np(getattr(pre.layer_state("fc").state, s).dense) for s in ("A", "G"))
    M = np.kron(G + lam_g * np.eye(5), A + lam_a * np.eye(7))
    lr = 0.3
    delta = -lr * step.reshape(-1)
    q = grad.reshape(-1) @ delta + 0.5 * delta @ M @ delta
    assert pre.predicted_change([step], [grad], lr) == pytest.approx(q, rel=1e-9)


# --------------------------------------------------------------------------------------------
# the families are pure functions
# --------------------------------------------------------------------------------------------
def _arrays(state):
    out = []
    for v in state:
        if isinstance(v, tuple):
            out += _arrays(v)
        elif hasattr(v, "shape"):
            out.append(np.array(v, copy=True))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_family_functions_are_pure_and_deterministic(method):
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(7)
    batches = _stream(rng, 3)
    config = CurvatureConfig(method, rank=3, T_inv=2, T_rsvd=2, T_corct=2)
    fam = build(config, registry.lookup(method), LayerShape(0, 7, 5, xp, "cpu"))
    state = fam.init(*batches[0], 0)
    before = _arrays(state)
    one = fam.update(state, *batches[1], 1)
    two = fam.update(state, *batches[1], 1)
    for x, y in zip(before, _arrays(state), strict=True):
        np.testing.assert_array_equal(x, y)  # the input state is untouched
    for x, y in zip(_arrays(one), _arrays(two), strict=True):
        np.testing.assert_array_equal(x, y)  # same inputs, same outputs
    grad = rng.standard_normal((5, 7))
    damping = Damping(config.damping_at(2))
    prepared = fam.prepare(one, damping, 2)
    np.testing.assert_array_equal(fam.precondition(prepared, grad, damping, 2), fam.precondition(one, grad, damping, 2))
    fam.check(one, "state")


def test_ekfac_carries_its_scalings_into_a_new_basis():
    rng = np.random.default_rng(8)
    QG, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    QA, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    PG, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    PA, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    S = rng.random((3, 4))
    old = np.kron(QG, QA) @ np.diag(S.reshape(-1)) @ np.kron(QG, QA).T
    new = np.kron(PG, PA)
    np.testing.assert_allclose(carry_scalings(S, (QG, QA), (PG, PA)).reshape(-1), np.diag(new.T @ old @ new),
                               rtol=1e-12)


# --------------------------------------------------------------------------------------------
# ranks and the inspect API
# --------------------------------------------------------------------------------------------
def test_rank_is_the_applied_rank_for_every_low_rank_method(xp):
    rng = np.random.default_rng(9)
    batches = [(asarray(xp, a), asarray(xp, g)) for a, g in _stream(rng, 3, N=6, d_a=30, d_g=20)]
    infos = {m: _fed(m, batches, rank=5).layer_state("fc") for m in ("rkfac", "bkfac", "brkfac")}
    for method, info in infos.items():
        assert info.applied_rank == {"A": 5, "G": 5}, method
    assert infos["rkfac"].held_rank == {"A": 5, "G": 5}
    assert infos["bkfac"].held_rank == {"A": 11, "G": 11}  # 5 kept through the truncation + 6 rows
    paper = _fed("bkfac", batches, held_rank=5, rank=11).layer_state("fc")
    assert paper.applied_rank == {"A": 11, "G": 11}  # the paper's b-kfac applies r + n


def test_applying_fewer_eigenpairs_than_held_equals_the_truncated_representation():
    rng = np.random.default_rng(10)
    batches = _stream(rng, 3, N=6, d_a=30, d_g=20)
    pre = _fed("bkfac", batches, rank=5, damping=0.1)
    info = pre.layer_state("fc")
    grad = rng.standard_normal((20, 30))
    lam_a, lam_g = pre.dampings("fc")

    def inverse(f, d, lam):
        L, Q = to_np(f.eigenvalues)[:5], to_np(f.eigenvectors)[:, :5]
        lam, L = lam + L[-1], L - L[-1]  # spectrum continuation
        return (Q * (1 / (L + lam) - 1 / lam)) @ Q.T + np.eye(d) / lam

    ref = inverse(info.state.G, 20, lam_g) @ grad @ inverse(info.state.A, 30, lam_a)
    np.testing.assert_allclose(pre.precondition("fc", grad), ref, rtol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_layer_state_describes_every_method(method):
    rng = np.random.default_rng(11)
    pre = _fed(method, _stream(rng, 2), rank=3)
    info = pre.layer_state("fc")
    assert isinstance(info, LayerState)
    assert (info.name, info.method, info.d_in, info.d_out, info.n_updates) == ("fc", method, 7, 5, 2)
    assert info.family == registry.lookup(method).family
    for side, values in info.eigenvalues.items():
        v = to_np(values).reshape(-1)
        assert np.all(v >= 0), side
    assert method in pre.summary() and "fc" in pre.summary()
    with pytest.raises(ValueError, match="no statistics for layer 'nope'"):
        pre.layer_state("nope")


def test_auto_picks_by_the_cost_model_and_says_so():
    config = CurvatureConfig("auto", rank=16)
    assert factor_module.choose_kind(config, 200, 8, 0) == "brand"  # wide factor, few rows
    assert factor_module.choose_kind(config, 10, 8, 0) == "reigh"  # narrow factor
    assert factor_module.choose_kind(config, 145, 4096, 0) == "reigh"  # a convolution's rows every step
    rare = CurvatureConfig("auto", rank=16, T_inv=1)  # r-kfac's EVD every step costs more
    assert factor_module.choose_kind(rare, 2000, 64, 0) == "brand"
    rng = np.random.default_rng(12)
    pre = KFACPreconditioner("auto", rank=16)
    pre.update("fc", rng.standard_normal((8, 200)), rng.standard_normal((8, 10)))
    assert pre.layer_state("fc").kinds == {"A": "brand", "G": "reigh"}
    assert "A: brand" in pre.summary() and "G: reigh" in pre.summary()


# --------------------------------------------------------------------------------------------
# checkpoints: format 1 converted, format 2 validated
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_format_1_checkpoints_load_and_continue_like_the_old_release(method):
    ref = np.load(DATA / "v1_reference.npz")
    options = {"rank": 3, "T_inv": 2, "T_rsvd": 2, "T_corct": 2, "seed": 1}
    if registry.lookup(method).kinds[0] in ("brand", "by-cost"):
        options.update(held_rank=3, rank=3 + 30)  # 0.1.0 applied every held eigenpair
    pre = KFACPreconditioner(method, **options)
    pre.load_state_dict(load_state(DATA / f"v1_{method}.npz"))
    assert pre.steps == 3
    pre.update("fc", ref["a3"], ref["g3"])
    pre.step()
    step = pre.precondition("fc", ref["grad"])
    if method == "ekfac-ra":  # its batch statistic is now N times 0.1.0's (families/ekfac.py)
        assert np.all(np.isfinite(step))
        return
    want = ref[f"step_{method}"]
    np.testing.assert_allclose(step, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_format_1_dtype_strings_of_numpy_scalar_classes_are_understood():
    state = load_state(DATA / "v1_kfac.npz")
    state["layers"]["fc"]["dtype"] = "float64'>"  # what 0.1.0 wrote after a reload
    pre = KFACPreconditioner("kfac", rank=3, T_inv=2, seed=1)
    pre.load_state_dict(state)
    assert pre.layer_state("fc").state.A.dense.dtype == np.float64


def test_unknown_formats_are_refused_naming_the_version():
    state = KFACPreconditioner("kfac").state_dict()
    state["format"] = 7
    with pytest.raises(ValueError, match="checkpoint format 7 is not supported"):
        KFACPreconditioner("kfac").load_state_dict(state)


def _tampered(method):
    rng = np.random.default_rng(13)
    pre = _fed(method, _stream(rng, 2), rank=3)
    return pre, load_state_like(pre.state_dict())


def load_state_like(state):
    """A deep copy with arrays copied (what load_state returns)."""
    if isinstance(state, dict):
        return {k: load_state_like(v) for k, v in state.items()}
    return np.array(state, copy=True) if hasattr(state, "shape") else state


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s["layers"]["fc"]["state"]["A"].pop("eigenvectors"), "given together"),
        (lambda s: s["layers"]["fc"]["state"].pop("G"), "'layers/fc/state/G' is missing"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("eigenvalues", np.full(7, np.nan)), "NaN"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("eigenvalues", -np.ones(7)), "non-negative"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("eigenvalues", np.arange(7.0)), "descending"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("dense", np.eye(6)), r"shape \(7, 7\)"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("dense", np.eye(7, dtype=np.float32)), "dtype float32"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("n_stats", 2.5), "non-negative integer"),
        (lambda s: s["layers"]["fc"]["state"]["A"].__setitem__("extra", 1), "unknown keys"),
        (lambda s: s["layers"]["fc"].__setitem__("namespace", "jaxx"), "unknown array namespace 'jaxx'"),
        (lambda s: s["layers"]["fc"].pop("dtype"), "lacks \\['dtype'\\]"),
        (lambda s: s.__setitem__("steps", -1), "'steps' must be a non-negative integer"),
    ],
)
def test_tampered_checkpoints_are_refused_naming_the_entry_and_change_nothing(edit, match):
    pre, state = _tampered("kfac")
    before = pre.state_dict()
    edit(state)
    with pytest.raises(ValueError, match=match):
        pre.load_state_dict(state)
    after = pre.state_dict()
    assert after["steps"] == before["steps"]
    for key in ("dense", "eigenvalues", "eigenvectors"):
        old, new = (s["layers"]["fc"]["state"]["A"][key] for s in (before, after))
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_save_load_is_bit_exact(tmp_path, method):
    pre, _ = _tampered(method)
    save_state(tmp_path / "one.npz", pre.state_dict())
    two = KFACPreconditioner(method, rank=3)
    two.load_state_dict(load_state(tmp_path / "one.npz"))
    save_state(tmp_path / "two.npz", two.state_dict())
    three = KFACPreconditioner(method, rank=3)
    three.load_state_dict(load_state(tmp_path / "two.npz"))
    grad = np.random.default_rng(14).standard_normal((5, 7))
    np.testing.assert_array_equal(three.precondition("fc", grad), pre.precondition("fc", grad))


def test_clipping_refuses_bad_learning_rates_and_unpaired_lists():
    from lowrank_online.curvature import kl_clip_scale

    pre = KFACPreconditioner("kfac", kl_clip=1e-2)
    steps, grads = [np.ones((2, 2))], [np.ones((2, 2))]
    for lr in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match="`lr`"):
            pre.clip(steps, grads, lr)
        with pytest.raises(ValueError, match="`lr`"):
            kl_clip_scale(steps, grads, lr, 1e-2, np)
    with pytest.raises(ValueError, match="`steps` has 1 entries but `grads` has 2"):
        pre.clip(steps, grads * 2, 0.1)
    with pytest.raises(ValueError, match="`kappa`"):
        kl_clip_scale(steps, grads, 0.1, 0.0, np)


def test_tensors_that_require_grad_are_refused_and_nothing_is_held():
    torch = pytest.importorskip("torch")
    from lowrank_online import LowRankEMA

    a = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(8, 3, dtype=torch.float64)
    pre = KFACPreconditioner("bkfac")
    with pytest.raises(TypeError, match="`a` requires grad: pass `a.detach\\(\\)`"):
        pre.update("fc", a, g)
    assert pre.layers == []
    pre.update("fc", a.detach(), g)
    assert not pre.layer_state("fc").state.A.eigenvectors.requires_grad
    ema = LowRankEMA(2)
    with pytest.raises(TypeError, match="`A` requires grad"):
        ema.update(a.T)
    assert ema.eigenvectors is None
