"""lowrank_online.torch on a CUDA device (skipped without one): statistics, curvature and steps
stay on the device, checkpoints follow the parameters' device, mixed precision with a GradScaler."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from torch import nn  # noqa: E402

from lowrank_online.curvature import METHODS  # noqa: E402
from lowrank_online.torch import KFAC, KFACOptimizer  # noqa: E402

CUDA = torch.device("cuda")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _tensors(state):
    if isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, torch.Tensor):
        yield state


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_the_device(method):
    model = _model().to(CUDA)
    opt = KFACOptimizer(model, "sgd", lr=0.05, method=method, rank=8, T_updt=1, T_inv=2, kl_clip=1e-2,
                        fisher="empirical" if method == "ekfac-ra" else "mc")
    losses = []
    for it in range(8):
        x, y = (t.to(CUDA) for t in _data(seed=it))
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    held = list(_tensors(opt.kfac.state_dict()))
    assert held and all(t.device.type == "cuda" for t in held)


def test_checkpoint_follows_the_parameters_device():
    model = _model().to(CUDA)
    kfac = KFAC(model, "bkfac", rank=8, T_updt=1)
    x, y = (t.to(CUDA) for t in _data())
    nn.functional.cross_entropy(model(x), y).backward()
    kfac.step()
    buf = io.BytesIO()
    torch.save(kfac.state_dict(), buf)
    buf.seek(0)
    cpu = KFAC(_model(), "bkfac", rank=8, T_updt=1)
    cpu.load_state_dict(torch.load(buf, weights_only=True))
    assert all(t.device.type == "cpu" for t in _tensors(cpu.state_dict()))
    buf.seek(0)
    back = KFAC(_model().to(CUDA), "bkfac", rank=8, T_updt=1)
    back.load_state_dict(torch.load(buf, weights_only=True, map_location="cpu"))
    assert all(t.device.type == "cuda" for t in _tensors(back.state_dict()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_with_grad_scaler_keeps_float32_factors(dtype):
    model = _model().to(CUDA)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    opt = KFACOptimizer(model, "sgd", lr=0.05, method="bkfac", rank=8, T_updt=1, grad_scaler=scaler,
                        keep_statistics=True)
    for it in range(6):
        x, y = (t.to(CUDA) for t in _data(seed=it))
        opt.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    a, g = opt.kfac.statistics("6")
    assert a.dtype == g.dtype == torch.float32 and a.device.type == "cuda"
    assert torch.isfinite(g).all()
