"""lowrank_online.torch: an MLP, a CNN and a small transformer block train with every method.

Tiny models and a few steps each (the whole file runs in seconds on 2 cores); the loss must go
down and nothing may warn.
"""

from __future__ import annotations

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
from torch import nn  # noqa: E402

from lowrank_online.curvature import METHODS  # noqa: E402
from lowrank_online.torch import KFAC, KFACOptimizer  # noqa: E402

STEPS = 12


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    X = torch.tensor(raw.data / 16.0, dtype=torch.float32)
    return (X - X.mean(0)), torch.tensor(raw.target)


def _mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))


def _cnn():
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))


class _Block(nn.Module):
    """Embedding + one pre-norm attention block (Linear q, k, v, o on (B, T, D)) + MLP + head.
    LayerNorm is left to the base optimizer."""

    def __init__(self, vocab=8, d=16, length=6):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        T = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(T))
        x = self.norm1(h)
        att = (self.q(x) @ self.k(x).transpose(1, 2)) / math.sqrt(x.shape[-1])
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        h = h + self.o(att.masked_fill(~mask, float("-inf")).softmax(-1) @ self.v(x))
        h = h + self.down(torch.relu(self.up(self.norm2(h))))
        return self.head(h).transpose(1, 2)  # (B, V, T): nn.CrossEntropyLoss's class dimension


def _sequences(n, vocab=8, length=6, seed=0):
    """Predict the previous token: needs the attention."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=gen)
    y = torch.roll(x, 1, dims=1)
    y[:, 0] = 0
    return x, y


def _train(model, opt, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _check(losses, method):
    assert all(math.isfinite(v) for v in losses), method
    assert sum(losses[-3:]) / 3 < losses[0], f"{method}: {losses[0]:.3f} -> {losses[-3:]}"


def _options(method):
    # ekfac-ra's running average is of the statistics' own batch gradient: the data gradient.
    fisher = "empirical" if method == "ekfac-ra" else "mc"
    return dict(method=method, fisher=fisher, rank=8, T_updt=2, T_inv=4, kl_clip=1e-2)


@pytest.mark.parametrize("method", METHODS)
def test_mlp_trains_on_digits(method, digits):
    X, y = digits
    torch.manual_seed(0)
    model = _mlp()
    opt = KFACOptimizer(model, "sgd", lr=0.1, base_options={"momentum": 0.5}, **_options(method))
    batches = [(X[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64]) for i in range(STEPS)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(_train(model, opt, batches), method)


@pytest.mark.parametrize("method", METHODS)
def test_cnn_trains_on_digits(method, digits):
    X, y = digits
    torch.manual_seed(0)
    model = _cnn()
    opt = KFACOptimizer(model, "sgd", lr=0.1, base_options={"momentum": 0.5}, **_options(method))
    assert opt.kfac.layers == ["1", "3", "6"]
    batches = [(X[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]) for i in range(STEPS)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(_train(model, opt, batches), method)


@pytest.mark.parametrize("method", METHODS)
def test_transformer_block_trains_on_a_sequence_task(method):
    torch.manual_seed(0)
    model = _Block()
    opt = KFACOptimizer(model, "adam", lr=3e-3, **_options(method))
    assert opt.kfac.layers == ["tok", "pos", "q", "k", "v", "o", "up", "down", "head"]
    assert "norm1: LayerNorm" in opt.kfac.summary()
    batches = [_sequences(16, seed=i) for i in range(STEPS)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(_train(model, opt, batches), method)


def test_bf16_autocast_trains_with_float32_factors(digits):
    X, y = digits
    torch.manual_seed(0)
    model = _mlp()
    kfac = KFAC(model, "bkfac", rank=8, T_updt=1, keep_statistics=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    losses = []
    for i in range(STEPS):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(X[i * 64:(i + 1) * 64])
        loss = nn.functional.cross_entropy(out.float(), y[i * 64:(i + 1) * 64])
        loss.backward()
        kfac.step()
        opt.step()
        losses.append(float(loss.detach()))
    a, g = kfac.statistics("2")
    assert a.dtype == g.dtype == torch.float32
    _check(losses, "bkfac bf16")
