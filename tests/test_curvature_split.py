"""KFACPreconditioner.decompose / update(decompositions=) / skip_update: an update split between
processes (one computes a decomposition, every one installs it) equals the update computed in one
place, bit for bit, and bad entries are refused before anything changes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank_online import DecompositionError
from lowrank_online.curvature import METHODS, KFACPreconditioner, registry
from lowrank_online.curvature.families import LayerShape, build

OPTS = dict(rank=3, T_inv=2, T_brand=1, T_rsvd=2, T_corct=2, kron_max_iter=20)


def _stats(step, n=7, d_a=5, d_g=4):
    rng = np.random.default_rng(step)
    return rng.standard_normal((n, d_a)), rng.standard_normal((n, d_g))


def _equal(s1, s2):
    if isinstance(s1, dict):
        return s1.keys() == s2.keys() and all(_equal(s1[k], s2[k]) for k in s1)
    if isinstance(s1, np.ndarray):
        return isinstance(s2, np.ndarray) and s1.dtype == s2.dtype and np.array_equal(s1, s2)
    return s1 == s2


@pytest.mark.parametrize("method", METHODS)
def test_the_parts_of_the_registry_are_the_familys(method):
    shape = LayerShape(0, 5, 4, np, "cpu")
    fam = build(KFACPreconditioner(method).config, registry.lookup(method), shape)
    assert fam.parts == registry.lookup(method).parts
    assert KFACPreconditioner(method).decompositions_due("new") == fam.parts


@pytest.mark.parametrize("method", METHODS)
def test_decompositions_computed_elsewhere_give_the_same_state_bit_for_bit(method):
    ref = KFACPreconditioner(method, **OPTS)  # the update in one place
    owners = {p: KFACPreconditioner(method, **OPTS) for p in registry.lookup(method).parts}  # one per part
    receiver = KFACPreconditioner(method, **OPTS)  # computes none of the decompositions
    for step in range(5):
        a, g = _stats(step)
        due = receiver.decompositions_due("fc")
        assert due == ref.decompositions_due("fc")
        before = owners[next(iter(owners))].state_dict()
        entries = {}
        for part, owner in owners.items():
            got = owner.decompose("fc", a, g, parts=[part])
            assert set(got) == ({part} & set(due))
            entries.update(got)
        assert _equal(owners[next(iter(owners))].state_dict(), before)  # decompose changes nothing
        ref.update("fc", a, g)
        receiver.update("fc", a, g, decompositions=entries)
        for part, owner in owners.items():
            owner.update("fc", a, g, decompositions={p: e for p, e in entries.items() if p != part})
        for pre in (receiver, *owners.values()):
            assert _equal(pre.state_dict(), ref.state_dict()), f"{method} step {step}"
            pre.step()
        ref.step()
    grad = np.ones((4, 5))
    np.testing.assert_array_equal(receiver.precondition("fc", grad), ref.precondition("fc", grad))


def test_nothing_due_between_inverse_steps_and_decompose_returns_nothing():
    pre = KFACPreconditioner("kfac", T_inv=3)
    a, g = _stats(0)
    pre.update("fc", a, g)
    pre.step()
    assert pre.decompositions_due("fc") == ()
    assert pre.decompose("fc", a, g) == {}
    pre.step()
    pre.step()
    assert pre.decompositions_due("fc") == ("A", "G")
    bk = KFACPreconditioner("bkfac")
    bk.update("fc", a, g)
    bk.step()
    assert bk.decompositions_due("fc") == ("A", "G")  # a B-update every T_brand


def test_bad_decompositions_are_refused_naming_them_and_nothing_changes():
    pre = KFACPreconditioner("kfac", T_inv=1)
    a, g = _stats(0)
    pre.update("fc", a, g)
    pre.step()
    a, g = _stats(1)
    good = pre.decompose("fc", a, g)
    before = pre.state_dict()
    bad_shape = {"A": {**good["A"], "eigenvectors": good["A"]["eigenvectors"][:-1]}}
    nan = {"A": {**good["A"], "eigenvalues": np.full_like(good["A"]["eigenvalues"], np.nan)}}
    f32 = {"A": {**good["A"], "eigenvalues": good["A"]["eigenvalues"].astype(np.float32)}}
    unsorted = {"A": {**good["A"], "eigenvalues": good["A"]["eigenvalues"][::-1].copy()}}
    for bad, err, word in [(["A"], TypeError, "decompositions"), ({"B": good["A"]}, ValueError, "decompositions"),
                           (bad_shape, ValueError, "eigenvectors"), (nan, ValueError, "NaN"),
                           (f32, ValueError, "dtype"), (unsorted, ValueError, "descending")]:
        with pytest.raises(err, match=word):
            pre.update("fc", a, g, decompositions=bad)
        assert _equal(pre.state_dict(), before)
    pre.step()  # step 2 with T_inv=1 is due again; a part given when nothing is due is refused
    late = KFACPreconditioner("kfac", T_inv=5)
    late.update("fc", a, g)
    late.step()
    with pytest.raises(ValueError, match="not due"):
        late.update("fc", a, g, decompositions=good)
    with pytest.raises(ValueError, match="`parts`"):
        pre.decompose("fc", a, g, parts=["C"])


def test_a_failed_decompose_counts_nothing_and_skip_update_takes_the_skip_path(monkeypatch):
    from lowrank_online import _linalg

    pre = KFACPreconditioner("kfac", T_inv=1, max_failures=2)
    a, g = _stats(0)
    pre.update("fc", a, g)
    pre.step()
    before = pre.state_dict()

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("injected")

    monkeypatch.setattr(_linalg, "small_eigh", broken)
    with pytest.raises(DecompositionError, match="injected"):
        pre.decompose("fc", a, g)
    assert pre.skipped_updates == {} and _equal(pre.state_dict(), before)
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match="skipped"):
        pre.skip_update("fc", "rank 1 failed")
    assert pre.skipped_updates == {"fc": 1} and _equal(pre.state_dict(), {**before, "skipped_updates": {"fc": 1}})
    with pytest.raises(DecompositionError, match="2 consecutive"):
        pre.skip_update("fc", "rank 1 failed again")
    with pytest.raises(TypeError, match="`reason`"):
        pre.skip_update("fc", 3)


def test_release_drops_a_layer_and_keeps_every_seed():
    """A released layer's state is gone; the layers named after it keep the indices (the seeds
    of their randomized decompositions) of a preconditioner that kept it, and feeding it again
    starts it afresh under its own index."""
    opts = dict(rank=2, oversample=0, n_iter=0, T_inv=1)  # randomized EVDs that depend on the seed
    keep, drop = KFACPreconditioner("rkfac", **opts), KFACPreconditioner("rkfac", **opts)
    fresh = KFACPreconditioner("rkfac", **opts)
    for pre in (keep, drop):
        pre.update("first", *_stats(0))
    drop.release("first")
    assert drop.layers == [] and "first" in keep.layers
    drop.release("never-fed")  # nothing to drop: ignored
    a, g = _stats(1, d_a=6, d_g=5)
    for pre in (keep, drop):
        pre.update("second", a, g)
    assert _equal(keep.state_dict()["layers"]["second"], drop.state_dict()["layers"]["second"])
    drop.update("first", *_stats(2))  # afresh: the first statistics of a new layer, index 0
    fresh.update("first", *_stats(2))
    saved = drop.state_dict()["layers"]["first"]
    assert saved["index"] == 0 and _equal(saved, fresh.state_dict()["layers"]["first"])
    with pytest.raises(TypeError, match="layer"):
        drop.release(3)


# ---------------------------------------------------------------------------- Gram factors
def _gram_blocks(blocks):
    from lowrank_online.curvature import Gram

    n = sum(x.shape[0] for x, _ in blocks)
    return (Gram(sum(x.T @ x for x, _ in blocks) / n, n), Gram(sum(y.T @ y for _, y in blocks) / n, n))


def _split_update(pre, layer, blocks):
    """What data-parallel processes do: Gram factors summed over the blocks of rows, the
    eigenbasis from one of them, the moments of every block in it, summed."""
    A, G = _gram_blocks(blocks)
    given = pre.decompose(layer, A, G) if pre.decompositions_due(layer) else None
    moments = None
    if registry.lookup(pre.method_of(layer)).takes_moments:
        moments = sum(pre.eigenbasis_moments(layer, x, y, decompositions=given) for x, y in blocks)
    pre.update(layer, A, G, decompositions=given, moments=moments)


@given(method=st.sampled_from(["kfac", "rkfac", "ekfac", "ekfac-ra"]), n=st.integers(2, 12), d_a=st.integers(1, 6),
       d_g=st.integers(1, 5), cuts=st.lists(st.integers(1, 11), max_size=3),
       dtype=st.sampled_from(["float64", "float32"]))
@settings(max_examples=40, deadline=None)
def test_gram_factors_of_row_blocks_give_the_update_of_the_rows(method, n, d_a, d_g, cuts, dtype):
    """Gram factors (and for EKFAC the summed moments in the new eigenbasis) of any split of a
    batch into blocks of rows: the update of the rows themselves, against a dense reference of
    the steps (the row path), over eigenbasis and non-eigenbasis steps (T_inv = 2)."""
    rtol = {"float64": 1e-9, "float32": 2e-3}[dtype]
    if method.startswith("ekfac"):
        # EKFAC depends on the eigenbasis chosen inside a repeated eigenvalue (a rank-deficient
        # factor's null space): two bases equal to rounding can differ there by a rotation, so
        # the comparison needs factors of full rank (more rows than either width).
        n += max(d_a, d_g)
    rows, split = KFACPreconditioner(method, T_inv=2, damping=0.1), KFACPreconditioner(method, T_inv=2, damping=0.1)
    rng = np.random.default_rng(n * 100 + d_a * 10 + d_g)
    bounds = sorted({c for c in cuts if c < n})
    for _ in range(4):
        a = rng.standard_normal((n, d_a)).astype(dtype)
        g = rng.standard_normal((n, d_g)).astype(dtype)
        rows.update("fc", a, g)
        edges = [0, *bounds, n]
        _split_update(split, "fc", [(a[i:j], g[i:j]) for i, j in zip(edges, edges[1:], strict=False)])
        grad = rng.standard_normal((d_g, d_a)).astype(dtype)
        want, got = rows.precondition("fc", grad), split.precondition("fc", grad)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
        rows.step()
        split.step()


def test_ekfac_gram_factors_and_moments_refuse_bad_input_and_change_nothing():
    from lowrank_online.curvature import Gram

    pre = KFACPreconditioner("ekfac", T_inv=2)
    a, g = _stats(0)
    blocks = [(a[:3], g[:3]), (a[3:], g[3:])]
    A, G = _gram_blocks(blocks)
    with pytest.raises(ValueError, match="due at step 0"):
        pre.eigenbasis_moments("fc", a, g)  # no eigenbasis yet: it must be given
    first = pre.decompose("fc", A, G)
    assert "scalings" not in first["eigenbasis"]  # carried only; there is nothing to carry yet
    with pytest.raises(ValueError, match="`moments`"):
        pre.update("fc", A, G, decompositions=first)  # Gram factors alone do not give the scalings
    with pytest.raises(ValueError, match="no scalings"):
        pre.update("fc", a, g, decompositions=first)  # nor do the rows, given a payload without them
    _split_update(pre, "fc", blocks)
    pre.step()
    before = pre.state_dict()
    a, g = _stats(1)
    A, G = _gram_blocks([(a, g)])
    M = pre.eigenbasis_moments("fc", a, g)  # step 1: not due, the current basis
    bad = [
        (dict(moments=M[:-1]), ValueError, "shape"),
        (dict(moments=np.full_like(M, np.nan)), ValueError, "NaN"),
        (dict(moments=M.astype(np.float32)), TypeError, "dtype"),
        (dict(moments=M.tolist()), TypeError, "moments"),
    ]
    for kwargs, err, word in bad:
        with pytest.raises(err, match=word):
            pre.update("fc", A, G, **kwargs)
        assert _equal(pre.state_dict(), before)
    with pytest.raises(ValueError, match="Gram factors"):
        pre.update("fc", a, g, moments=M)  # rows give their own moments
    with pytest.raises(TypeError, match="rows"):
        pre.eigenbasis_moments("fc", A, G)
    assert _equal(pre.state_dict(), before)
    pre.update("fc", A, G, moments=M)
    pre.step()
    a, g = _stats(2)
    A, G = _gram_blocks([(a, g)])
    M = pre.eigenbasis_moments("fc", a, g, decompositions=pre.decompose("fc", A, G))
    before = pre.state_dict()
    with pytest.raises(ValueError, match="eigenbasis .* is due"):
        pre.update("fc", A, G, moments=M)  # step 2: the moments are in a basis not given
    given = pre.decompose("fc", A, G)
    lost = {"eigenbasis": {k: v for k, v in given["eigenbasis"].items() if k != "scalings"}}
    with pytest.raises(ValueError, match="no scalings"):
        pre.update("fc", A, G, decompositions=lost, moments=M)
    assert _equal(pre.state_dict(), before)
    # the other methods: no moments, and the B-methods need rows
    kfac = KFACPreconditioner("kfac")
    with pytest.raises(ValueError, match="`moments` is for EKFAC"):
        kfac.update("fc", A, G, moments=M)
    kfac.update("fc", A, G)
    with pytest.raises(ValueError, match="no eigenbasis moments"):
        kfac.eigenbasis_moments("fc", a, g)
    with pytest.raises(ValueError, match="needs the rows"):
        KFACPreconditioner("bkfac").update("fc", A, G)
    with pytest.raises(ValueError, match="rows"):
        KFACPreconditioner("ekfac").update("fc", A, Gram(G.matrix, G.rows + 1), moments=M)


@pytest.mark.parametrize("method", ["ekfac", "ekfac-ra"])
def test_ekfac_gram_factors_and_moments_on_every_backend(xp, method):
    """The split update on every namespace: arrays of the caller's namespace and dtype, the
    row update's step."""
    from _helpers import asarray, to_np

    rows, split = KFACPreconditioner(method, T_inv=2), KFACPreconditioner(method, T_inv=2)
    for step in range(3):
        a, g = _stats(step)
        rows.update("fc", asarray(xp, a), asarray(xp, g))
        _split_update(split, "fc", [(asarray(xp, a[:4]), asarray(xp, g[:4])), (asarray(xp, a[4:]), asarray(xp, g[4:]))])
        rows.step()
        split.step()
    grad = asarray(xp, np.ones((4, 5)))
    got = split.precondition("fc", grad)
    assert type(got) is type(grad) and got.dtype == grad.dtype
    np.testing.assert_allclose(to_np(got), to_np(rows.precondition("fc", grad)), rtol=1e-10)
