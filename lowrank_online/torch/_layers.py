"""Per-module adapters: what a supported ``nn.Module`` contributes to K-FAC.

Each adapter turns the module's input into the activation rows ``a`` (``M x d_in``, ones column
appended for a bias), the gradient of its output into the rows ``g`` (``M x d_out``), and its
parameter gradients into the ``d_out x d_in`` matrix ``[W b]`` of
:class:`~lowrank_online.curvature.KFACPreconditioner`'s conventions, and writes a step back.

Weight sharing (Eschenhagen et al. 2023): a Linear on ``(B, T, D)`` inputs or a Conv2d on its
``B x L`` patches shares the weight over ``T`` (or ``L``) positions.

* ``"expand"`` treats every position as a row: ``M = B T``. It is exact where the loss has a term
  per position and the layers after it act position-wise and linearly (the deep linear network
  of the tests).
* ``"reduce"`` averages the inputs and sums the output gradients over the positions:
  ``M = B``. It is exact where the positions are pooled before the loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__: list[str] = []

SHARING = ("expand", "reduce")


def _plain_linear(module: nn.Module) -> bool:
    """A Linear whose forward is ``x W^T + b`` (subclasses that keep Linear's forward, such as
    ``NonDynamicallyQuantizableLinear``; a subclass with its own forward may compute anything)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


class LayerAdapter:
    """Base: a module, its name, its weight-sharing convention."""

    kind = ""

    def __init__(self, name: str, module: nn.Module, sharing: str) -> None:
        self.name, self.module, self.sharing = name, module, sharing
        self.has_bias = getattr(module, "bias", None) is not None
        self.weight_shape = tuple(module.weight.shape)
        self.bias_shape = tuple(module.bias.shape) if self.has_bias else None
        self._buffer: torch.Tensor | None = None

    # -------------------------------------------------------------- shapes
    @property
    def d_out(self) -> int:
        raise NotImplementedError

    @property
    def d_in(self) -> int:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return [self.module.weight] + ([self.module.bias] if self.has_bias else [])

    def check_shapes(self) -> None:
        """Raise ``ValueError`` naming the module when its parameters changed shape since it was
        registered (the held curvature would not fit them)."""
        w = tuple(self.module.weight.shape)
        b = getattr(self.module, "bias", None)
        b = tuple(b.shape) if b is not None else None
        if w != self.weight_shape or b != self.bias_shape:
            raise ValueError(
                f"the parameters of module {self.name!r} changed shape since KFAC registered it "
                f"(weight {self.weight_shape} -> {w}, bias {self.bias_shape} -> {b}); create a new KFAC "
                "for the changed model"
            )

    def signature(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be loaded into this layer."""
        return {"kind": self.kind, "d_out": self.d_out, "d_in": self.d_in, "sharing": self.sharing,
                "weight_shape": list(self.weight_shape), "bias": self.has_bias}

    def describe(self) -> str:
        return f"{type(self.module).__name__}, [W b] {self.d_out} x {self.d_in}, {self.sharing}"

    # -------------------------------------------------------------- statistics
    def _with_ones(self, a: torch.Tensor) -> torch.Tensor:
        if not self.has_bias:
            return a
        return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)

    def _share(self, x: torch.Tensor, reduce: str) -> torch.Tensor:
        """``(B, positions..., d)`` -> rows: all positions (expand) or their mean / sum (reduce)."""
        d = x.shape[-1]
        if self.sharing == "expand" or x.ndim <= 2:
            return x.reshape(-1, d)
        x = x.reshape(x.shape[0], -1, d)
        return x.mean(dim=1) if reduce == "mean" else x.sum(dim=1)

    def input_rows(self, inputs: tuple[Any, ...]) -> torch.Tensor:
        raise NotImplementedError

    def output_rows(self, grad_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -------------------------------------------------------------- gradients
    def grad_matrix(self) -> torch.Tensor | None:
        """``[W b]``'s gradient as ``d_out x d_in``, or None when the weight has no gradient."""
        w = self.module.weight.grad
        if w is None:
            return None
        m = self._weight_as_matrix(w)
        if not self.has_bias:
            return m  # a view, no copy
        b = self.module.bias.grad
        b = b[:, None] if b is not None else w.new_zeros(self.d_out, 1)
        # One buffer per layer, reused: a fresh d_out x d_in block every step costs page faults
        # as well as the copy (asv: torch_kfac).
        buf = self._buffer
        if buf is None or buf.dtype != m.dtype or buf.device != m.device:
            buf = self._buffer = torch.empty(self.d_out, self.d_in, dtype=m.dtype, device=m.device)
        return torch.cat([m, b.to(m.dtype)], dim=1, out=buf)

    def grad_blocks(self, dtype: torch.dtype) -> list[torch.Tensor] | None:
        """``[W b]``'s gradient as views of ``.grad``, ``[W]`` or ``[W, b[:, None]]``, for a
        preconditioner that writes the step into them; None when that cannot be done in place
        (no gradient, another dtype than the factors', a weight that is not a view as a matrix)."""
        w = self.module.weight.grad
        if w is None or w.dtype != dtype or w.layout != torch.strided:
            return None
        m = self._weight_as_matrix(w)
        if m.data_ptr() != w.data_ptr() or not m.is_contiguous():
            return None
        if not self.has_bias:
            return [m]
        b = self.module.bias.grad
        if b is None or b.dtype != dtype:
            return None
        return [m, b[:, None]]

    def set_grad(self, step: torch.Tensor) -> None:
        """Write the ``d_out x d_in`` step into the parameters' ``.grad`` in place."""
        w = self.module.weight
        n_w = self.d_in - (1 if self.has_bias else 0)
        with torch.no_grad():
            src = self._matrix_as_weight(step[:, :n_w])
            if src.data_ptr() != w.grad.data_ptr():  # a step made in place in .grad is there already
                w.grad.copy_(src)
            if self.has_bias and self.module.bias.grad is not None:
                self.module.bias.grad.copy_(step[:, n_w])

    def _weight_as_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def _matrix_as_weight(self, m: torch.Tensor) -> torch.Tensor:
        return m


class LinearAdapter(LayerAdapter):
    """``nn.Linear`` on inputs of any leading dimensions ``(..., d)``."""

    kind = "linear"

    @property
    def d_out(self) -> int:
        return self.weight_shape[0]

    @property
    def d_in(self) -> int:
        return self.weight_shape[1] + int(self.has_bias)

    def input_rows(self, inputs: tuple[Any, ...]) -> torch.Tensor:
        return self._with_ones(self._share(inputs[0].detach(), "mean"))

    def output_rows(self, grad_output: torch.Tensor) -> torch.Tensor:
        return self._share(grad_output.detach(), "sum")


class Conv2dAdapter(LayerAdapter):
    """``nn.Conv2d`` (groups = 1), any stride, padding (numbers, ``"same"``, ``"valid"``, every
    ``padding_mode``) and dilation, through KFC's patch unfolding (Grosse & Martens 2016).

    The weight ``(C_out, C_in, kh, kw)`` is the matrix ``C_out x (C_in kh kw)``, the column order
    of :func:`torch.nn.functional.unfold`; the patches of the ``L`` output positions are the
    shared positions.
    """

    kind = "conv2d"

    def __init__(self, name: str, module: nn.Conv2d, sharing: str) -> None:
        if module.groups != 1:
            raise NotImplementedError(
                f"module {name!r} is a Conv2d with groups={module.groups}: KFAC supports groups=1 only "
                f"(pass skip_layers=[{name!r}] to leave it to the base optimizer)"
            )
        super().__init__(name, module, sharing)

    @property
    def d_out(self) -> int:
        return self.weight_shape[0]

    @property
    def d_in(self) -> int:
        c, kh, kw = self.weight_shape[1:]
        return c * kh * kw + int(self.has_bias)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Explicit padding where unfold cannot do it (string padding, non-zero modes); returns the
        input and the zero padding left to unfold."""
        mod = self.module
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                return x, (0, 0)
            # "same": PyTorch pads the extra row/column of an even kernel at the end.
            pads = []
            for k, d in zip(reversed(mod.kernel_size), reversed(mod.dilation), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
            return F.pad(x, pads, mode=mode), (0, 0)
        if mod.padding_mode != "zeros" and any(mod.padding):
            ph, pw = mod.padding
            return F.pad(x, [pw, pw, ph, ph], mode=mod.padding_mode), (0, 0)
        return x, tuple(mod.padding)

    def input_rows(self, inputs: tuple[Any, ...]) -> torch.Tensor:
        x = inputs[0].detach()
        if x.ndim == 3:  # unbatched (C, H, W)
            x = x[None]
        mod = self.module
        x, padding = self._pad(x)
        patches = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=padding, stride=mod.stride)
        return self._with_ones(self._share(patches.transpose(1, 2), "mean"))  # (B, L, C kh kw)

    def output_rows(self, grad_output: torch.Tensor) -> torch.Tensor:
        g = grad_output.detach()
        if g.ndim == 3:
            g = g[None]
        return self._share(g.flatten(2).transpose(1, 2), "sum")  # (B, L, C_out)

    def _weight_as_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(w.shape[0], -1)

    def _matrix_as_weight(self, m: torch.Tensor) -> torch.Tensor:
        return m.reshape(self.weight_shape)


class EmbeddingAdapter(LayerAdapter):
    """``nn.Embedding`` as a Linear on one-hot inputs: ``[W] = weight^T`` (``d x V``), ``a`` the
    one-hot rows (so the input factor is the diagonal of token frequencies).

    The preconditioner holds the input factor as a dense ``V x V`` representation: registration
    is limited by ``max_embedding_size`` (see :class:`~lowrank_online.torch.KFAC`).
    """

    kind = "embedding"

    def __init__(self, name: str, module: nn.Embedding, sharing: str) -> None:
        if module.sparse or module.max_norm is not None:
            what = "sparse=True" if module.sparse else f"max_norm={module.max_norm}"
            raise NotImplementedError(
                f"module {name!r} is an Embedding with {what}, which KFAC does not support "
                f"(pass skip_layers=[{name!r}] to leave it to the base optimizer)"
            )
        super().__init__(name, module, sharing)
        self.has_bias = False

    @property
    def d_out(self) -> int:
        return self.weight_shape[1]

    @property
    def d_in(self) -> int:
        return self.weight_shape[0]

    def input_rows(self, inputs: tuple[Any, ...]) -> torch.Tensor:
        idx = inputs[0].detach()
        dtype = self.module.weight.dtype
        one_hot = F.one_hot(idx.reshape(-1), self.d_in).to(dtype)
        return self._share(one_hot.reshape(*idx.shape, self.d_in), "mean")

    def output_rows(self, grad_output: torch.Tensor) -> torch.Tensor:
        return self._share(grad_output.detach(), "sum")

    def _weight_as_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.T

    def _matrix_as_weight(self, m: torch.Tensor) -> torch.Tensor:
        return m.T

    def set_grad(self, step: torch.Tensor) -> None:
        pad = self.module.padding_idx
        if pad is not None:
            # PyTorch never updates the padding row; the preconditioner must not either.
            step = step.clone()
            step[:, pad] = 0
        with torch.no_grad():
            self.module.weight.grad.copy_(step.T)


def adapter_for(name: str, module: nn.Module, sharing: str, max_embedding_size: int) -> LayerAdapter | str | None:
    """The adapter of a supported module, a reason string for a known but unsupported one, or
    None for a module KFAC does not know."""
    if _plain_linear(module):
        return LinearAdapter(name, module, sharing)
    if isinstance(module, nn.Linear):
        return f"subclass {type(module).__name__} of Linear with its own forward"
    if type(module) is nn.Conv2d or (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward):
        return Conv2dAdapter(name, module, sharing)
    if isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward:
        if module.num_embeddings > max_embedding_size:
            return (f"Embedding with {module.num_embeddings} > max_embedding_size={max_embedding_size} "
                    "entries (its input factor would be dense V x V)")
        return EmbeddingAdapter(name, module, sharing)
    return None
