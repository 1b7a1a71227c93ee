"""lowrank_online.torch.KFAC / KFACOptimizer: the module adds no numerics of its own, accumulates,
resumes bit-exactly, and refuses bad input clearly without losing anything."""

from __future__ import annotations

import io
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from lowrank_online.curvature import METHODS, KFACPreconditioner  # noqa: E402
from lowrank_online.torch import KFAC, KFACOptimizer  # noqa: E402


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _batch(n=12, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _state_equal(s1, s2):
    """Recursive bit-exact equality of two state dicts."""
    if isinstance(s1, dict):
        return s1.keys() == s2.keys() and all(_state_equal(s1[k], s2[k]) for k in s1)
    if isinstance(s1, (list, tuple)):
        return len(s1) == len(s2) and all(_state_equal(a, b) for a, b in zip(s1, s2, strict=True))
    if isinstance(s1, torch.Tensor):
        return isinstance(s2, torch.Tensor) and s1.dtype == s2.dtype and s1.shape == s2.shape and torch.equal(s1, s2)
    return s1 == s2


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("kl_clip", [1e-3, None])
@pytest.mark.parametrize("method", METHODS)
def test_steps_equal_the_preconditioner_fed_with_the_same_statistics(method, kl_clip):
    """With KL-clipping the module preconditions its [W b] buffer: the steps are the
    preconditioner's to the bit. Without, it preconditions W and b in place in .grad as two
    column blocks (no [W b] is assembled): the same steps up to rounding."""
    model = _mlp()
    opts = dict(rank=4, T_updt=1, T_inv=2, T_brand=1, kl_clip=kl_clip, damping=0.1)
    fisher = "empirical" if method == "ekfac-ra" else "mc"  # ekfac-ra averages the data gradient
    kfac = KFAC(model, method, fisher=fisher, keep_statistics=True, lr=0.1, **opts)
    ref = KFACPreconditioner(method, **{**opts, "T_rsvd": 2, "T_corct": 2})
    names = {"0": "0", "2": "2", "4": "4"}
    for it in range(3):
        x, y = _batch(seed=it)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = {n: torch.cat([model.get_submodule(n).weight.grad, model.get_submodule(n).bias.grad[:, None]], 1)
                  for n in names}
        kfac.step()
        for n in names:
            ref.update(n, *kfac.statistics(n))
        steps = [ref.precondition(n, before[n]) for n in names]
        if kl_clip is not None:
            steps = ref.clip(steps, [before[n] for n in names], 0.1)
        ref.step()
        for n, step in zip(names, steps, strict=True):
            mod = model.get_submodule(n)
            got = torch.cat([mod.weight.grad, mod.bias.grad[:, None]], 1)
            if kl_clip is not None:
                assert torch.equal(got, step), f"{method} step {it} layer {n}"
            else:
                torch.testing.assert_close(got, step, rtol=1e-4, atol=1e-6 * float(step.abs().max()))
                assert kfac._adapters[n]._buffer is None  # no [W b] buffer was needed
    assert _state_equal(kfac.preconditioner.state_dict(), ref.state_dict())


@pytest.mark.parametrize("fisher", ["empirical", "type2"])
def test_accumulation_over_micro_batches_equals_one_batch(fisher):
    x, y = _batch(n=12)
    results = []
    for k in (1, 3):
        model = _mlp()
        kfac = KFAC(model, "kfac", fisher=fisher, accumulation_steps=k, keep_statistics=True, T_updt=1, T_inv=1)
        model.zero_grad()
        for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
            (nn.functional.cross_entropy(model(xs), ys) / k).backward()
        kfac.step()
        results.append(({n: kfac.statistics(n) for n in kfac.layers}, _grads(model)))
    (stats1, grads1), (stats3, grads3) = results
    for n in stats1:
        a1, g1 = stats1[n]
        a3, g3 = stats3[n]
        assert torch.equal(a1, a3)
        torch.testing.assert_close(g3, g1, rtol=1e-12, atol=1e-14)
    for n in grads1:
        torch.testing.assert_close(grads3[n], grads1[n], rtol=1e-10, atol=1e-13)


def test_statistics_and_held_state_never_keep_an_autograd_graph():
    model = _mlp(dtype=torch.float32)
    kfac = KFAC(model, "bkfac", keep_statistics=True, T_updt=1, rank=4)
    for it in range(3):
        x, y = _batch(seed=it, dtype=torch.float32)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        kfac.step()
    for n in kfac.layers:
        assert not any(t.requires_grad for t in kfac.statistics(n))

    def tensors(s):
        if isinstance(s, dict):
            for v in s.values():
                yield from tensors(v)
        elif isinstance(s, torch.Tensor):
            yield s

    held = list(tensors(kfac.state_dict()))
    assert held and all(not t.requires_grad and t.grad_fn is None for t in held)


def test_mc_pass_leaves_grad_alone_and_the_user_backward_intact():
    """The Monte-Carlo pass runs through torch.autograd.grad: .grad is the data gradient."""
    model, twin = _mlp(), _mlp()
    KFAC(model, "kfac", T_updt=1)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    nn.functional.cross_entropy(twin(x), y).backward()
    for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n


def test_statistics_are_captured_every_T_updt_steps_only():
    model = _mlp()
    kfac = KFAC(model, "kfac", T_updt=3, T_inv=3)
    fed = []
    for it in range(7):
        x, y = _batch(seed=it)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = kfac.preconditioner.state_dict()
        kfac.step()
        fed.append(not _state_equal(before["layers"], kfac.preconditioner.state_dict()["layers"]))
    assert fed == [True, False, False, True, False, False, True]


# ----------------------------------------------------------------------------- resume
def _train(model, opt, its, start=0, scheduler=None):
    for it in range(start, start + its):
        x, y = _batch(seed=100 + it)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("method", ["bkfac", "kfac", "ekfac", "kpsvd", "brkfac"])
def test_resume_through_torch_save_is_bit_exact(method):
    def build():
        model = _mlp()
        opt = KFACOptimizer(model, "sgd", lr=0.05, base_options={"momentum": 0.9}, method=method, rank=4,
                            T_updt=2, T_inv=4, kl_clip=1e-2)
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    model, opt, sched = build()
    _train(model, opt, 5, scheduler=sched)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    _train(model, opt, 5, start=5, scheduler=sched)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2, sched2 = build()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    _train(model2, opt2, 5, start=5, scheduler=sched2)
    for (n, p), q in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert _state_equal(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_checkpoints_through_weights_only_load(method):
    model = _mlp()
    opts = dict(rank=4, T_updt=1, T_inv=1, fisher="empirical" if method == "ekfac-ra" else "mc")
    kfac = KFAC(model, method, **opts)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    kfac.step()
    buf = io.BytesIO()
    torch.save(kfac.state_dict(), buf)
    buf.seek(0)
    kfac2 = KFAC(_mlp(), method, **opts)
    kfac2.load_state_dict(torch.load(buf, weights_only=True))
    assert _state_equal(kfac.state_dict(), kfac2.state_dict())


# ----------------------------------------------------------------------------- optimizer
def test_optimizer_follows_torch_optim_conventions():
    model = _mlp()
    groups = [
        {"params": model[0].parameters(), "lr": 0.1},
        {"params": list(model[2].parameters()) + list(model[4].parameters())},
    ]
    opt = KFACOptimizer(groups, "sgd", model=model, lr=0.01, method="kfac", T_updt=1, T_inv=1, kl_clip=1e-3)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.base.param_groups and [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    x, y = _batch()

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # parameters outside the optimizer are not preconditioned
    part = KFACOptimizer(model[4].parameters(), "adam", model=_mlp(), lr=1e-3)
    assert part.kfac.layers == []
    opt.kfac.remove()
    part = KFACOptimizer(list(model[4].parameters()), "adam", model=model, lr=1e-3, method="kfac")
    assert part.kfac.layers == ["4"]
    with pytest.raises(TypeError, match="`model`"):
        KFACOptimizer(model.parameters(), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="`base`"):
        KFACOptimizer(_mlp(), "lbfgs-ish", lr=0.1)


def test_optimizer_with_a_built_base_and_a_kl_clip_per_group_rate():
    model = _mlp()
    base = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.2},
                            {"params": list(model[2].parameters()) + list(model[4].parameters()), "lr": 0.05}])
    opt = KFACOptimizer(model, base, method="kfac", T_updt=1, T_inv=1, kl_clip=1e-4)
    _train(model, opt, 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_load_state_dict_of_another_model_raises_and_changes_nothing():
    model = _mlp()
    opt = KFACOptimizer(model, "sgd", lr=0.05, method="kfac", T_updt=1, T_inv=1)
    _train(model, opt, 2)
    before = opt.state_dict()
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)).double()
    other_opt = KFACOptimizer(other, "sgd", lr=0.05, method="kfac", T_updt=1, T_inv=1)
    _train_other = other_opt.state_dict()
    with pytest.raises(ValueError, match="another model"):
        opt.load_state_dict(_train_other)
    with pytest.raises(ValueError, match="method"):
        KFACOptimizer(_mlp(), "sgd", lr=0.05, method="bkfac").load_state_dict(before)
    with pytest.raises(ValueError, match="KFACOptimizer checkpoint"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    assert _state_equal(opt.state_dict(), before)


# ----------------------------------------------------------------------------- bad input
def test_a_module_registered_twice_is_refused_until_removed():
    model = _mlp()
    first = KFAC(model)
    with pytest.raises(ValueError, match="'0' is already registered"):
        KFAC(model)
    first.remove()
    KFAC(model)


def test_a_dropped_kfac_releases_its_modules():
    model = _mlp()
    KFAC(model)  # not kept
    import gc

    gc.collect()
    KFAC(model)


def test_parameters_that_changed_shape_raise_naming_the_module_and_keep_the_state():
    model = _mlp()
    kfac = KFAC(model, "kfac", T_updt=1, T_inv=1)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.0), 0)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    kfac.step()
    before = kfac.state_dict()
    model[4].weight = nn.Parameter(torch.randn(5, 8, dtype=torch.float64))
    model[4].bias = nn.Parameter(torch.randn(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"module '4' changed shape"):
        model(x)
    with pytest.raises(ValueError, match=r"module '4' changed shape"):
        kfac.step()
    assert _state_equal(kfac.state_dict(), before)


def test_skip_layers_that_match_nothing_warn_and_matches_skip():
    model = _mlp()
    with pytest.warns(UserWarning, match=r"'conv\.\*' matches no module"):
        KFAC(model, skip_layers=["conv.*", "4"]).remove()
    kfac = KFAC(model, skip_layers="Linear")  # a class name
    assert kfac.layers == []
    assert "skip_layers 'Linear'" in kfac.summary()


def test_fp16_overflow_skips_the_update_with_a_warning_and_keeps_the_curvature():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).half()
    kfac = KFAC(model, "kfac", fisher="empirical", T_updt=1, T_inv=1)
    x, y = torch.randn(8, 4).half(), torch.randint(0, 2, (8,))
    nn.functional.cross_entropy(model(x).float(), y).backward()
    kfac.step()
    assert kfac.factor_dtype == torch.float32
    held = kfac.preconditioner.state_dict()
    model.zero_grad()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    big = torch.full((8, 4), 6e4).half()  # the first layer's output, 2.4e5, overflows fp16
    nn.functional.cross_entropy(model(big).float(), y).backward()
    with pytest.warns(RuntimeWarning, match=r"not finite") as record:
        kfac.step()
    assert any("curvature update is skipped" in str(w.message) for w in record)
    assert _state_equal(kfac.preconditioner.state_dict()["layers"], held["layers"])


def test_grad_scaler_statistics_equal_unscaled_ones_and_an_overflow_step_is_skipped():
    stats = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        model = _mlp(dtype=torch.float32)
        opt = KFACOptimizer(model, "sgd", lr=0.1, method="kfac", T_updt=1, T_inv=1, grad_scaler=scaler,
                            keep_statistics=True)
        x, y = _batch(dtype=torch.float32)
        loss = nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        stats.append({n: opt.kfac.statistics(n) for n in opt.kfac.layers})
    for n in stats[0]:
        torch.testing.assert_close(stats[1][n][1], stats[0][n][1], rtol=1e-6, atol=0)
    # an overflowing scale: the scaler skips the step; KFAC drops the statistics of that pass
    model = _mlp(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    opt = KFACOptimizer(model, "sgd", lr=0.1, method="kfac", T_updt=1, T_inv=1, grad_scaler=scaler)
    for it in range(2):
        x, y = _batch(seed=it, dtype=torch.float32)
        x = x * 100  # weight gradients of 1e39 overflow float32 at this scale
        opt.zero_grad()
        if it == 1:
            with pytest.warns(RuntimeWarning, match="discarded"):
                out = model(x)
        else:
            out = model(x)
        scaler.scale(nn.functional.cross_entropy(out, y)).backward()
        scaler.step(opt)
        scaler.update()
    assert opt.kfac.steps == 1 and scaler.get_scale() < 2.0**127


def test_options_are_validated_naming_the_argument():
    model = _mlp()
    cases = [
        (dict(method="nope"), ValueError, "`method`"),
        (dict(fisher="true"), ValueError, "`fisher`"),
        (dict(loss="hinge"), ValueError, "`loss`"),
        (dict(loss=nn.L1Loss()), TypeError, "`loss`"),
        (dict(loss=nn.CrossEntropyLoss(reduction="none")), ValueError, "reduction"),
        (dict(loss=nn.CrossEntropyLoss(label_smoothing=0.1)), NotImplementedError, "label smoothing"),
        (dict(fisher="empirical", mc_samples=2), ValueError, "`mc_samples`"),
        (dict(T_updt=2, T_inv=3), ValueError, "`T_inv`"),
        (dict(T_updt=0), ValueError, "`T_updt`"),
        (dict(weight_sharing="both"), ValueError, "`weight_sharing`"),
        (dict(factor_dtype=torch.float16), TypeError, "`factor_dtype`"),
        (dict(inv_dtype=torch.bfloat16), ValueError, "`inv_dtype`"),
        (dict(inv_dtype=torch.int32), TypeError, "`inv_dtype`"),
        (dict(skip_layers=[3]), TypeError, "`skip_layers`"),
        (dict(skip_layers=["("]), ValueError, "`skip_layers`"),
        (dict(output_fn=3), TypeError, "`output_fn`"),
        (dict(grad_scaler=object()), TypeError, "`grad_scaler`"),
        (dict(rnak=3), TypeError, "option"),
        (dict(accumulation_steps=0), ValueError, "`accumulation_steps`"),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            KFAC(model, **kw)
    with pytest.raises(TypeError, match="`model`"):
        KFAC(torch.zeros(3))
    kfac = KFAC(model, kl_clip=1e-3)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="`lr`"):
        kfac.step()


def test_a_model_output_that_is_not_a_tensor_needs_output_fn():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return {"logits": self.fc(x)}

    model = Dict()
    kfac = KFAC(model, T_updt=1)
    with pytest.raises(TypeError, match="output_fn"):
        model(torch.randn(4, 3))
    kfac.remove()
    kfac = KFAC(model, "kfac", T_updt=1, T_inv=1, output_fn=lambda out: out["logits"])
    out = model(torch.randn(4, 3))
    nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 0, 1])).backward()
    kfac.step()
    assert kfac.preconditioner.layers == ["fc"]


def test_summary_lists_unsupported_and_functionally_called_modules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm = nn.LayerNorm(8)
            self.side = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.norm(x + self.attn(x, x, x)[0])
            h = h + nn.functional.linear(h, self.side.weight, self.side.bias)  # hooks never fire
            return self.head(h).mean(dim=1)

    model = Block()
    kfac = KFAC(model, "kfac", T_updt=1, T_inv=1)
    assert kfac.layers == ["side", "head"]
    x = torch.randn(2, 5, 8)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    with pytest.warns(RuntimeWarning, match=r"'side' has a gradient but its forward hooks never fired"):
        kfac.step()
    text = kfac.summary()
    assert "attn.out_proj" in text and "called functionally by nn.MultiheadAttention" in text
    assert "attn: MultiheadAttention" in text and "norm: LayerNorm" in text
    assert "never called through their forward hooks" in text and "  side" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfac.step()  # warned once


def test_paused_and_eval_forwards_are_not_captured():
    model = _mlp()
    kfac = KFAC(model, "kfac", T_updt=1, T_inv=1, accumulation_steps=1)
    x, y = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with kfac.paused():
            model(x)
        model.eval()
        model(x)
        model.train()
        with torch.no_grad():
            model(x)
        nn.functional.cross_entropy(model(x), y).backward()
        kfac.step()
    assert kfac.summary().count("1 statistics updates") == 3
