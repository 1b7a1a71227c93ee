"""lowrank_online.torch: the K-factors KFAC feeds equal dense float64 references.

Where K-FAC is exact (deep linear networks with the type-2 Fisher; one sample with the empirical
Fisher; "expand" and "reduce" weight sharing in their settings, Eschenhagen et al. 2023) the
Kronecker product ``Gamma ⊗ A`` of the statistics equals the GGN / Fisher block computed with
``torch.func``. Elsewhere the factors are checked against curvlinops' KFAC and against an
explicit patch unfolding.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.func import functional_call, hessian, jacrev  # noqa: E402

from lowrank_online.torch import KFAC  # noqa: E402

RTOL = 1e-10  # float64 throughout


def _factors(kfac: KFAC, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, g = kfac.statistics(name)
    m = a.shape[0]
    return (a.T @ a / m).numpy(), (g.T @ g / m).numpy()


def _capture(model, x, loss_fn, fisher="type2", method="kfac", y=None, **kw) -> KFAC:
    """One statistics step: forward, the user's backward, kfac.step()."""
    kfac = KFAC(model, method, fisher=fisher, loss=loss_fn, keep_statistics=True, T_updt=1, T_inv=1, **kw)
    out = model(x)
    target = y if y is not None else torch.zeros_like(out)
    loss_fn(out, target).backward()
    kfac.step()
    kfac.remove()
    return kfac


def _layer_ggn(model, name, x, loss_fn, target, *, empirical=False) -> np.ndarray:
    """Exact GGN (or, with ``empirical``, gradient outer product) of the loss w.r.t. ``[W b]`` of
    module ``name``, row-major ``vec``, by ``torch.func``."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    mod = dict(model.named_modules())[name]
    has_bias = mod.bias is not None
    W0 = params[f"{name}.weight"]
    Wb0 = torch.cat([W0, params[f"{name}.bias"][:, None]], 1) if has_bias else W0

    def out_of(Wb):
        p = dict(params)
        p[f"{name}.weight"] = Wb[:, :-1] if has_bias else Wb
        if has_bias:
            p[f"{name}.bias"] = Wb[:, -1]
        return functional_call(model, p, (x,))

    out = out_of(Wb0)
    if empirical:
        # One sample, L = c l: the empirical Fisher c grad(l) grad(l)^T is grad(L) grad(L)^T / c
        # (c = 1 / C for the mean squared error over C outputs, curvlinops' convention).
        c = (
            1.0 / out.numel()
            if getattr(loss_fn, "reduction", "mean") == "mean" and isinstance(loss_fn, nn.MSELoss)
            else 1.0
        )
        grad = jacrev(lambda Wb: loss_fn(out_of(Wb), target))(Wb0).reshape(-1)
        return (torch.outer(grad, grad) / c).numpy()
    J = jacrev(out_of)(Wb0).reshape(out.numel(), -1)
    H = hessian(lambda o: loss_fn(o.reshape(out.shape), target))(out.reshape(-1))
    return (J.T @ H @ J).numpy()


def _assert_close(actual, expected, rtol=RTOL):
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300)
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.3g}"


def _deep_linear(dims, *, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(dims[i], dims[i + 1], bias=bias) for i in range(len(dims) - 1)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [True, False])
def test_type2_kfac_equals_ggn_of_deep_linear_network_with_mse(reduction, bias):
    model = _deep_linear([5, 4, 3, 2], bias=bias)
    x = torch.randn(7, 5, dtype=torch.float64)
    loss_fn = nn.MSELoss(reduction=reduction)
    kfac = _capture(model, x, loss_fn)
    for name in ["0", "1", "2"]:
        A, G = _factors(kfac, name)
        _assert_close(np.kron(G, A), _layer_ggn(model, name, x, loss_fn, torch.zeros(7, 2, dtype=torch.float64)))


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.CrossEntropyLoss(reduction="sum")], ids=["mse", "ce-sum"])
def test_empirical_kfac_equals_gradient_outer_product_on_one_sample(loss_fn):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(1, 4, dtype=torch.float64)
    y = torch.randn(1, 3, dtype=torch.float64) if isinstance(loss_fn, nn.MSELoss) else torch.tensor([2])
    kfac = _capture(model, x, loss_fn, fisher="empirical", y=y)
    for name in ["0", "2"]:
        A, G = _factors(kfac, name)
        _assert_close(np.kron(G, A), _layer_ggn(model, name, x, loss_fn, y, empirical=True))


def test_type2_cross_entropy_on_one_sample_equals_ggn():
    model = _deep_linear([4, 5, 3])
    x = torch.randn(1, 4, dtype=torch.float64)
    y = torch.tensor([1])
    loss_fn = nn.CrossEntropyLoss()
    kfac = _capture(model, x, loss_fn, y=y)
    for name in ["0", "1"]:
        A, G = _factors(kfac, name)
        _assert_close(np.kron(G, A), _layer_ggn(model, name, x, loss_fn, y))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_expand_on_sequences_equals_ggn_of_deep_linear_network(reduction):
    """Linear layers on (B, T, D) with a loss term per position: K-FAC-expand is exact."""
    model = _deep_linear([4, 3, 2], seed=2)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    loss_fn = nn.MSELoss(reduction=reduction)
    kfac = _capture(model, x, loss_fn, weight_sharing="expand")
    target = torch.zeros(3, 5, 2, dtype=torch.float64)
    for name in ["0", "1"]:
        A, G = _factors(kfac, name)
        _assert_close(np.kron(G, A), _layer_ggn(model, name, x, loss_fn, target))


class _Pooled(nn.Module):
    """Linear layers on (B, T, D), mean over T, a Linear head: the "reduce" setting."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.head = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.l2(self.l1(x)).mean(dim=1))


def test_reduce_on_pooled_sequences_equals_ggn_of_deep_linear_network():
    torch.manual_seed(3)
    model = _Pooled().double()
    x = torch.randn(4, 6, 4, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    kfac = _capture(model, x, loss_fn, weight_sharing="reduce")
    target = torch.zeros(4, 2, dtype=torch.float64)
    for name in ["l1", "l2", "head"]:
        A, G = _factors(kfac, name)
        _assert_close(np.kron(G, A), _layer_ggn(model, name, x, loss_fn, target))
    # expand is not exact here: the check has teeth
    kfac = _capture(model, x, loss_fn, weight_sharing="expand")
    A, G = _factors(kfac, "l1")
    ggn = _layer_ggn(model, "l1", x, loss_fn, target)
    assert np.linalg.norm(np.kron(G, A) - ggn) > 1e-3 * np.linalg.norm(ggn)


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss(reduction="sum")], ids=["ce", "mse-sum"])
def test_monte_carlo_gradient_factor_averages_to_the_type2_one(loss_fn):
    """E[v v^T] = H: the MC factor of many samples approaches the type-2 factor (same scale)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    y = (
        torch.tensor([0, 1, 2, 0])
        if isinstance(loss_fn, nn.CrossEntropyLoss)
        else torch.zeros(4, 3, dtype=torch.float64)
    )
    _, G2 = _factors(_capture(model, x, loss_fn, y=y), "2")
    _, Gmc = _factors(_capture(model, x, loss_fn, fisher="mc", mc_samples=4000, y=y), "2")
    _assert_close(Gmc, G2, rtol=0.1)


# ----------------------------------------------------------------------------- convolutions
def _explicit_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(B, L, C kh kw) patches by explicit slicing of the padded input, one output position at a
    time (the definition of the convolution, not unfold)."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):
        pads = []
        for k, d in ((kw, dw), (kh, dh)):
            total = d * (k - 1) if conv.padding == "same" else 0
            pads += [total // 2, total - total // 2]
    else:
        pads = [conv.padding[1], conv.padding[1], conv.padding[0], conv.padding[0]]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = nn.functional.pad(x, pads, mode=mode)
    H = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    W = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(H):
        for j in range(W):
            patch = xp[:, :, i * sh: i * sh + dh * (kh - 1) + 1: dh, j * sw: j * sw + dw * (kw - 1) + 1: dw]
            rows.append(patch.reshape(x.shape[0], -1))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize(
    "conv_kw",
    [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
     dict(kernel_size=2, padding="same"), dict(kernel_size=3, padding=1, padding_mode="reflect", bias=False),
     dict(kernel_size=3, padding="valid", stride=(1, 2))],
    ids=["k3p1", "stride-dilation", "same-even", "reflect-nobias", "valid"])
@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_conv2d_factors_equal_those_of_an_explicit_unfolding(conv_kw, sharing):
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, **conv_kw).double()
    model = nn.Sequential(conv, nn.Flatten())
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    kfac = KFAC(model, "kfac", fisher="empirical", loss="mse", keep_statistics=True, T_updt=1, T_inv=1,
                weight_sharing=sharing)
    out = model(x)
    out.pow(2).mean().backward()  # the "mse" loss against zero targets
    with torch.no_grad():
        grad_out = 2 * conv(x) / out.numel()  # d loss / d conv output
    kfac.step()
    a, g = kfac.statistics("0")
    P = _explicit_patches(x, conv)  # (B, L, C kh kw)
    if conv.bias is not None:
        P = torch.cat([P, torch.ones(*P.shape[:2], 1, dtype=P.dtype)], dim=2)
    Gr = grad_out.flatten(2).transpose(1, 2) * out.numel()  # per-term gradients, (B, L, C_out)
    if sharing == "expand":
        P, Gr = P.reshape(-1, P.shape[-1]), Gr.reshape(-1, Gr.shape[-1])
    else:
        P, Gr = P.mean(dim=1), Gr.sum(dim=1)
    m = P.shape[0]
    _assert_close((a.T @ a / a.shape[0]).numpy(), (P.T @ P / m).numpy())
    # Gamma = c sum_t g_t g_t^T with c = 1 / (number of loss terms), for the mean squared error
    _assert_close((g.T @ g / g.shape[0]).numpy(), (Gr.T @ Gr / out.numel()).numpy())


def test_conv2d_with_groups_raises_naming_the_module():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten())
    with pytest.raises(NotImplementedError, match=r"'0'.*groups=2.*skip_layers"):
        KFAC(model)
    KFAC(model, skip_layers=["0"])  # skipping it is the way out


def test_embedding_factors_are_token_frequencies_and_linear_rows():
    torch.manual_seed(6)
    emb = nn.Embedding(7, 3).double()
    model = nn.Sequential(emb, nn.Linear(3, 2)).double()
    idx = torch.tensor([[0, 3, 3], [6, 0, 0]])
    kfac = KFAC(model, "kfac", fisher="type2", loss="mse", keep_statistics=True, T_updt=1, T_inv=1)
    out = model(idx)
    out.pow(2).mean().backward()
    kfac.step()
    a, _ = kfac.statistics("0")
    A = (a.T @ a / a.shape[0]).numpy()
    counts = np.bincount(idx.reshape(-1).numpy(), minlength=7) / idx.numel()
    _assert_close(A, np.diag(counts))


# ----------------------------------------------------------------------------- curvlinops
def _curvlinops_factors(model, loss_fn, x, y, fisher_type, kfac_approx="expand"):
    cl = pytest.importorskip("curvlinops")
    params = [p for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = cl.KFACLinearOperator(model, loss_fn, params, [(x, y)], fisher_type=fisher_type,
                                   kfac_approx=kfac_approx, separate_weight_and_bias=False,
                                   check_deterministic=False)
        op.compute_kronecker_factors()
    return op._input_covariances, op._gradient_covariances


@pytest.mark.parametrize("fisher", ["type2", "empirical"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_factors_have_curvlinops_scale_on_an_mlp(fisher, reduction):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4)).double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 4, (9,))
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    ins, grads = _curvlinops_factors(model, loss_fn, x, y, {"type2": "type-2"}.get(fisher, fisher))
    kfac = _capture(model, x, loss_fn, fisher=fisher, y=y)
    for name in ["0", "2"]:
        A, G = _factors(kfac, name)
        _assert_close(A, ins[name].numpy(), rtol=1e-9)
        _assert_close(G, grads[name].numpy(), rtol=1e-9)


@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_factors_have_curvlinops_scale_on_a_cnn_with_mse(sharing):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4)).double()
    x, y = torch.randn(5, 2, 6, 6, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    ins, grads = _curvlinops_factors(model, loss_fn, x, y, "type-2", kfac_approx=sharing)
    kfac = _capture(model, x, loss_fn, fisher="type2", y=y, weight_sharing=sharing)
    for name in ["0", "3"]:
        A, G = _factors(kfac, name)
        _assert_close(A, ins[name].numpy(), rtol=1e-9)
        _assert_close(G, grads[name].numpy(), rtol=1e-9)
