"""The loss's side of the Fisher: loss terms, their scale, and the vectors back-propagated for the
Monte-Carlo and type-2 estimates.

The loss ``L = c sum_t l_t`` is a sum over loss terms ``t`` with scale ``c``: ``1 / (number of
terms)`` for ``reduction="mean"``, 1 for ``"sum"``. Cross-entropy has a term per predicted
distribution (class dimension 1, as for :class:`torch.nn.CrossEntropyLoss`, or the last one of
a 1-D/2-D output); the squared error (:class:`torch.nn.MSELoss`) a term per output entry,
``l_t = (f_t - y_t)^2``. The GGN / Fisher of ``L`` is ``c sum_t J_t^T H_t J_t`` with ``H_t`` the
Hessian of ``l_t`` with respect to the output: ``diag(p) - p p^T`` for cross-entropy, ``2`` for
the squared error.

* type-2 back-propagates the columns of a square root ``S_t S_t^T = H_t``:
  ``S = diag(sqrt p) - p sqrt(p)^T`` (column ``k`` is ``sqrt(p_k) (e_k - p)``) and ``sqrt(2) I``;
* Monte Carlo back-propagates the gradient of the loss at a target drawn from the model,
  ``p - e_y`` with ``y ~ Cat(p)`` and ``sqrt(2) eps`` with ``eps ~ N(0, I)`` (the target of
  ``(f - y)^2`` is ``N(f, I/2)``); its outer product has expectation ``H_t``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__: list[str] = []

FISHERS = ("mc", "empirical", "type2")
_LOSSES = {"cross_entropy": "cross_entropy", "crossentropy": "cross_entropy", "ce": "cross_entropy",
           "mse": "mse"}


class LossSpec(NamedTuple):
    kind: str  # "cross_entropy" | "mse"
    reduction: str  # "mean" | "sum"


def loss_spec(loss: Any, fisher: str) -> LossSpec:
    """Validate ``loss`` (a name or a :class:`~torch.nn.CrossEntropyLoss` /
    :class:`~torch.nn.MSELoss`) and return its kind and reduction."""
    if isinstance(loss, str):
        kind = _LOSSES.get(loss.lower())
        if kind is None:
            raise ValueError(f"`loss` must be 'cross_entropy', 'mse', nn.CrossEntropyLoss or nn.MSELoss, got {loss!r}")
        return LossSpec(kind, "mean")
    if isinstance(loss, nn.CrossEntropyLoss):
        if fisher != "empirical" and (loss.weight is not None or loss.label_smoothing != 0.0):
            raise NotImplementedError(
                "`loss` has class weights or label smoothing, whose Fisher differs from the softmax's; "
                "use fisher='empirical' or a plain nn.CrossEntropyLoss"
            )
        kind = "cross_entropy"
    elif isinstance(loss, nn.MSELoss):
        kind = "mse"
    else:
        raise TypeError(
            f"`loss` must be 'cross_entropy', 'mse', nn.CrossEntropyLoss or nn.MSELoss, got {type(loss).__name__}"
        )
    if loss.reduction not in ("mean", "sum"):
        raise ValueError(f"`loss` must have reduction 'mean' or 'sum', got {loss.reduction!r}")
    return LossSpec(kind, loss.reduction)


def _class_last(pred: torch.Tensor) -> torch.Tensor:
    """Cross-entropy output with its class dimension last: (C,) and (N, C) as they are,
    (N, C, d1, ...) -> (N, d1, ..., C)."""
    return pred if pred.ndim <= 2 else pred.movedim(1, -1)


def _class_back(v: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return v if pred.ndim <= 2 else v.movedim(-1, 1)


def n_terms(pred: torch.Tensor, spec: LossSpec) -> int:
    if spec.kind == "mse":
        return pred.numel()
    return pred.numel() // pred.shape[-1 if pred.ndim <= 2 else 1] if pred.ndim else 1


def loss_scale(pred: torch.Tensor, spec: LossSpec) -> float:
    """``c`` of ``L = c sum_t l_t`` for one forward pass."""
    return 1.0 / n_terms(pred, spec) if spec.reduction == "mean" else 1.0


def generator(device: torch.device, seed: int, step: int, index: int, rank: int | None = None) -> torch.Generator:
    """A generator derived from (seed, step, forward index[, rank]): a resumed run draws the same
    targets as an uninterrupted one without any RNG state in the checkpoint. Data-parallel
    ranks add their rank, so that their micro-batches do not share one stream of draws."""
    entropy = [seed, step, index] + ([] if rank is None else [rank])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return gen


def backprop_vectors(pred: torch.Tensor, spec: LossSpec, fisher: str, mc_samples: int,
                     gen: torch.Generator | None) -> list[torch.Tensor]:
    """Vectors ``v_k`` (each shaped like ``pred``, float32 or wider) whose back-propagation gives
    the Fisher's gradients: ``sum_k E[v_k v_k^T] = H`` per loss term (type-2: the columns of
    ``S``; Monte Carlo: ``mc_samples`` sampled loss gradients, to be averaged)."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    f = pred.detach().to(dtype)
    if spec.kind == "mse":
        if fisher == "type2":
            eye = torch.eye(f.shape[-1], dtype=dtype, device=f.device) * math.sqrt(2.0)
            return [eye[k].expand_as(f) for k in range(f.shape[-1])]
        return [
            math.sqrt(2.0) * torch.randn(f.shape, generator=gen, dtype=dtype, device=f.device)
            for _ in range(mc_samples)
        ]
    logits = _class_last(f)
    p = torch.softmax(logits, dim=-1)
    C = p.shape[-1]
    if fisher == "type2":
        root = p.sqrt()
        out = []
        for k in range(C):
            v = -p * root[..., k:k + 1]
            v[..., k] += root[..., k]
            out.append(_class_back(v, pred))
        return out
    flat = p.reshape(-1, C)
    vs = []
    for _ in range(mc_samples):
        y = torch.multinomial(flat, 1, generator=gen).squeeze(1)
        v = flat - F.one_hot(y, C).to(dtype)
        vs.append(_class_back(v.reshape(p.shape), pred))
    return vs
