"""A small fully-connected network written against the array API, with the K-FAC statistics.

Convention (documented once in ``docs/conventions.rst``): layer ``l`` has weight ``W`` of shape
``d_out x d_in`` and bias ``b`` of shape ``d_out``. Its input activations, with a column of
ones appended when the layer has a bias, are ``a`` (``N x (d_in + 1)``). Its pre-activations are
``s = a [W b]^T``. The per-sample pre-activation gradients of the per-sample loss are ``g``
(``N x d_out``). The gradient of the mean loss is then ``(1/N) g^T a``, a ``d_out x (d_in + 1)``
matrix whose last column is the bias gradient, and the K-factors are ``E[a a^T]`` and
``E[g g^T]``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import _array, _validate
from .losses import Loss

__all__ = ["MLP", "LayerStatistics"]

_ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")


def _activate(name: str, s: Any, xp: Any) -> Any:
    if name == "relu":
        return xp.maximum(s, xp.zeros_like(s))
    if name == "tanh":
        return xp.tanh(s)
    if name == "sigmoid":
        return 1.0 / (1.0 + xp.exp(-s))
    return s


def _derivative(name: str, s: Any, h: Any, xp: Any) -> Any:
    """Derivative of the activation at pre-activation ``s`` (with ``h = act(s)``)."""
    if name == "relu":
        return xp.astype(s > 0, s.dtype)
    if name == "tanh":
        return 1.0 - h * h
    if name == "sigmoid":
        return h * (1.0 - h)
    return xp.ones_like(s)


class LayerStatistics(NamedTuple):
    """What a K-FAC-family preconditioner needs for one layer after a backward pass."""

    a: Any  # N x (d_in [+1]) input activations, ones column last when the layer has a bias
    g: Any  # N x d_out per-sample pre-activation gradients of the per-sample loss
    grad: Any  # d_out x (d_in [+1]) gradient of the mean loss, bias gradient as last column


class MLP:
    """Dense layers with an activation between them (none after the last).

    Parameters
    ----------
    sizes : sequence of int
        ``[d_0, d_1, ..., d_L]``: input width, hidden widths, output width.
    activation : {"relu", "tanh", "sigmoid", "identity"}
        Hidden activation.
    bias : bool
        Give every layer a bias (default True).
    seed : None, int or Generator
        Initial weights (He/Glorot-uniform scale), drawn on the host.
    xp : namespace, optional
        Array namespace of the parameters (default NumPy).
    device : optional
        Device of the parameters.
    dtype : str, optional
        ``"float32"`` or ``"float64"`` (default float64 on NumPy, float32 elsewhere).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online.nn import MLP
    >>> net = MLP([4, 8, 3], seed=0, xp=xp)
    >>> z = net.forward(xp.ones((5, 4)))
    >>> z.shape
    (5, 3)
    """

    def __init__(
        self,
        sizes: list[int],
        *,
        activation: str = "relu",
        bias: bool = True,
        seed: Any = 0,
        xp: Any = None,
        device: Any = None,
        dtype: str | None = None,
    ) -> None:
        if len(sizes) < 2:
            raise ValueError(f"`sizes` needs an input and an output width, got {sizes!r}")
        for s in sizes:
            _validate.check_int(s, "sizes[i]", minimum=1)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {_ACTIVATIONS}, got {activation!r}")
        if xp is None:
            import array_api_compat.numpy as xp
        self.xp = xp
        self.device = device if device is not None else xp.__array_namespace_info__().default_device()
        if dtype is None:
            dtype = "float64" if _array.is_numpy(xp) else "float32"
        if dtype not in ("float32", "float64"):
            raise ValueError(f"`dtype` must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = getattr(xp, dtype)
        self.sizes = [int(s) for s in sizes]
        self.activation = activation
        self.bias = bool(bias)
        rng = _array.as_generator(seed)
        self.params: list[dict[str, Any]] = []
        for d_in, d_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            gain = math.sqrt(6.0 / d_in) if activation == "relu" else math.sqrt(6.0 / (d_in + d_out))
            W = rng.uniform(-gain, gain, size=(d_out, d_in)).astype(dtype)
            layer = {"W": xp.asarray(W, device=self.device)}
            if self.bias:
                layer["b"] = xp.zeros((d_out,), dtype=self.dtype, device=self.device)
            self.params.append(layer)
        self._cache: list[tuple[Any, Any, Any]] | None = None

    @property
    def layer_names(self) -> list[str]:
        return [f"layer{i}" for i in range(len(self.params))]

    @property
    def n_parameters(self) -> int:
        return sum(int(math.prod(p.shape)) for layer in self.params for p in layer.values())

    def _with_bias(self, h: Any) -> Any:
        if not self.bias:
            return h
        ones = self.xp.ones((h.shape[0], 1), dtype=h.dtype, device=_array.device(h))
        return self.xp.concat([h, ones], axis=1)

    def weight_matrix(self, i: int) -> Any:
        """``[W b]`` of layer ``i`` (d_out x (d_in + 1)), the matrix the statistics refer to."""
        layer = self.params[i]
        if not self.bias:
            return layer["W"]
        return self.xp.concat([layer["W"], layer["b"][:, None]], axis=1)

    def forward(self, X: Any, *, store: bool = True) -> Any:
        """Network outputs for inputs ``X`` (N x d_0); caches activations when ``store``."""
        xp = self.xp
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"`X` must have shape (N, {self.sizes[0]}), got {tuple(X.shape)}")
        cache = []
        h = X
        last = len(self.params) - 1
        for i, layer in enumerate(self.params):
            a = self._with_bias(h)
            s = h @ layer["W"].T
            if self.bias:
                s = s + layer["b"][None, :]
            h = s if i == last else _activate(self.activation, s, xp)
            cache.append((a, s, h))
        self._cache = cache if store else None
        return h

    def backward(self, dz: Any) -> list[LayerStatistics]:
        """Back-propagate per-sample output gradients ``dz`` (N x d_L) through the last forward.

        ``dz[t]`` is ``d ell_t / d z_t`` for the per-sample loss (not divided by N), as returned
        by :meth:`Loss.gradient`. Returns one :class:`LayerStatistics` per layer.
        """
        if self._cache is None:
            raise ValueError("backward() needs a forward(X, store=True) first")
        xp = self.xp
        n = dz.shape[0]
        out: list[LayerStatistics] = []
        g = dz
        for i in range(len(self.params) - 1, -1, -1):
            a, s, h = self._cache[i]
            if i != len(self.params) - 1:
                g = g * _derivative(self.activation, s, h, xp)
            out.append(LayerStatistics(a, g, (g.T @ a) / n))
            if i:
                g = g @ self.params[i]["W"]
        return out[::-1]

    def loss_and_statistics(
        self,
        X: Any,
        y: Any,
        loss: Loss,
        *,
        fisher: str = "mc",
        rng: np.random.Generator | None = None,
    ) -> tuple[float, list[LayerStatistics], list[Any]]:
        """One forward pass, the gradients of the mean loss, and the K-factor statistics.

        ``fisher="mc"`` back-propagates targets sampled from the model (true Fisher,
        Monte-Carlo, one sample per input); ``"empirical"`` uses the data targets (the same pass
        as the gradient). Returns ``(loss value, statistics, gradients)``, where
        ``statistics[i].g`` comes from the Fisher pass and ``gradients[i]`` is the data gradient
        of layer ``i`` in ``[W b]`` form.
        """
        xp = self.xp
        z = self.forward(X)
        value = float(loss.value(z, y, xp))
        data = self.backward(loss.gradient(z, y, xp))
        grads = [st.grad for st in data]
        if fisher == "empirical":
            return value, data, grads
        if fisher != "mc":
            raise ValueError(f"`fisher` must be 'mc' or 'empirical', got {fisher!r}")
        sampled = loss.sample(z, rng if rng is not None else np.random.default_rng(), xp)
        stats = self.backward(loss.gradient(z, sampled, xp))
        return value, stats, grads

    def apply_update(self, i: int, delta: Any) -> None:
        """``[W b] += delta`` for layer ``i`` (delta in the ``[W b]`` layout)."""
        layer = self.params[i]
        if self.bias:
            layer["W"] = layer["W"] + delta[:, :-1]
            layer["b"] = layer["b"] + delta[:, -1]
        else:
            layer["W"] = layer["W"] + delta

    def state_dict(self) -> dict[str, Any]:
        return {f"layer{i}": dict(layer) for i, layer in enumerate(self.params)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, layer in enumerate(self.params):
            saved = state[f"layer{i}"]
            for key in layer:
                value = self.xp.asarray(saved[key], device=self.device)
                if tuple(value.shape) != tuple(layer[key].shape):
                    raise ValueError(
                        f"saved layer{i}.{key} has shape {tuple(value.shape)}, expected {tuple(layer[key].shape)}"
                    )
                layer[key] = self.xp.astype(value, self.dtype)
