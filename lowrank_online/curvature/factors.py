"""One K-factor of one layer: its exponential average and its (low-rank) inverse representation.

Pure functions over a :class:`FactorState`. The kinds (paper 001):

* ``"eigh"``: exact EVD of the dense EA factor every ``T_inv`` updates (k-fac);
* ``"reigh"``: randomized EVD of the dense EA factor every ``T_inv`` updates (r-kfac, Alg. 1);
* ``"brand"``: B-updates of a low-rank representation with each statistics batch every
  ``T_brand`` updates (b-kfac, Alg. 4). Optionally an RSVD overwrite every ``T_rsvd`` (b-r-kfac,
  Alg. 5) or a light correction every ``T_corct`` (b-kfac-c, Alg. 6-7). Those two need the dense
  EA factor; pure b-kfac never forms a d x d matrix.

Statistics enter as ``X`` of shape ``N x d`` (rows are samples: activations ``a`` or
pre-activation gradients ``g``). The factor is ``E[x x^T] = X^T X / N``, and the EA follows
eq. (5) with ``kappa(0) = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .. import _array, _linalg
from ..ema import EMAState, _b_update, _correct, _restore_orthonormality
from ..operators import as_operand
from ..randomized import reigh
from ..solve import _damped_solve

__all__: list[str] = []

KINDS = ("eigh", "reigh", "brand")
Schedule = Callable[[int], float]


class FactorSpec(NamedTuple):
    """Static description of how one K-factor is maintained."""

    kind: str
    decay: float
    rank: Schedule
    oversample: Schedule
    n_iter: int
    T_inv: int
    T_brand: int
    T_rsvd: int | None  # b-r-kfac overwrite period (brand only)
    T_corct: int | None  # b-kfac-c correction period (brand only)
    phi_crc: float
    init: str  # brand: "exact" (M_0 = A_0 A_0^T) or "reigh" (paper's RSVD start)
    seed: tuple[int, ...]
    reorthonormalize_every: int = 100

    @property
    def keep_dense(self) -> bool:
        if self.kind != "brand":
            return True
        return self.T_rsvd is not None or self.T_corct is not None or self.init == "reigh"


class FactorState(NamedTuple):
    dense: Any  # EA matrix (d x d), or None when the kind does not need it
    eigenvalues: Any  # inverse representation, descending (None before the first inverse)
    eigenvectors: Any
    n_stats: int  # statistics batches seen
    n_brand: int  # B-updates applied (brand kind)


def empty_state() -> FactorState:
    return FactorState(None, None, None, 0, 0)


def _rng(spec: FactorSpec, k: int) -> np.random.Generator:
    return np.random.default_rng([*spec.seed, k])


def _rank(spec: FactorSpec, k: int, d: int) -> int:
    return max(1, min(int(spec.rank(k)), d))


def _dense_inverse(spec: FactorSpec, M: Any, k: int, xp: Any) -> tuple[Any, Any]:
    d = M.shape[0]
    if spec.kind == "eigh" or _rank(spec, k, d) >= d:
        w, V = _linalg.small_eigh(M, xp)
        return xp.clip(w, min=0.0), V
    res = reigh(
        M, _rank(spec, k, d), oversample=int(spec.oversample(k)), n_iter=spec.n_iter, seed=_rng(spec, k), check_finite=False
    )
    return res.eigenvalues, res.eigenvectors


def update(state: FactorState, X: Any, k: int, spec: FactorSpec, xp: Any) -> FactorState:
    """Incorporate one statistics batch ``X`` (N x d) at preconditioner step ``k``.

    Raises :class:`~lowrank_online.DecompositionError` when an inverse cannot be computed; the
    caller keeps the old state.
    """
    n = X.shape[0]
    first = state.n_stats == 0
    dense, L, Q, n_brand = state.dense, state.eigenvalues, state.eigenvectors, state.n_brand
    old_dense = dense
    if spec.keep_dense:
        batch = (X.T @ X) / n
        dense = batch if first else spec.decay * dense + (1.0 - spec.decay) * batch
    if spec.kind == "brand":
        if first and spec.init == "reigh":
            L, Q = _dense_inverse(spec._replace(kind="reigh"), dense, k, xp)
            n_brand = 1
        elif first or k % spec.T_brand == 0:
            ema_state = EMAState(L, Q, n_brand)
            d = X.shape[1]
            rank = _rank(spec, k, d)
            if not first and spec.T_rsvd and k % spec.T_rsvd == 0:
                # Alg. 5: overwrite "B_{k-1}" with the RSVD of the EA factor before this batch.
                R = reigh(old_dense, rank, oversample=int(spec.oversample(k)), n_iter=spec.n_iter,
                          seed=_rng(spec, k), check_finite=False)
                ema_state = EMAState(R.eigenvalues, R.eigenvectors, n_brand)
            ema_state = _b_update(ema_state, X.T / math.sqrt(n), rank, spec.decay, xp)
            if spec.T_corct and k % spec.T_corct == 0:
                # Alg. 7: correct against the current EA factor M_k, n_crc = phi_crc * r modes.
                pool = min(rank, ema_state.eigenvalues.shape[0])
                n_modes = max(1, int(round(spec.phi_crc * pool)))
                idx = _array.choice(_rng(spec, k), pool, n_modes)
                ema_state = _correct(ema_state, as_operand(dense, "dense", check_finite=False), idx, xp)
            if spec.reorthonormalize_every and ema_state.n_updates % spec.reorthonormalize_every == 0:
                L, Q = _restore_orthonormality(ema_state.eigenvalues, ema_state.eigenvectors, xp)
            else:
                L, Q = ema_state.eigenvalues, ema_state.eigenvectors
            n_brand = ema_state.n_updates
    elif first or k % spec.T_inv == 0:
        L, Q = _dense_inverse(spec, dense, k, xp)
    return FactorState(dense, L, Q, state.n_stats + 1, n_brand)


def lambda_max(state: FactorState, xp: Any) -> float:
    """Largest eigenvalue of the representation used for the inverse."""
    L = state.eigenvalues
    return float(L[0]) if L is not None and L.shape[0] else 0.0


def trace(state: FactorState, d: int, continuation: bool, xp: Any) -> float:
    """Trace of the represented factor (with the continued spectrum when asked)."""
    L = state.eigenvalues
    if L is None or L.shape[0] == 0:
        return 0.0
    total = float(xp.sum(L))
    if continuation and L.shape[0] < d:
        total += (d - L.shape[0]) * float(L[-1])
    return total


def solve(state: FactorState, Y: Any, damping: float, continuation: bool, xp: Any) -> Any:
    """``(M + damping I)^{-1} Y`` with the held representation (paper 001, Alg. 1 l. 16-17)."""
    return _damped_solve(state.eigenvalues, state.eigenvectors, Y, damping, continuation, xp)


def to_dict(state: FactorState) -> dict[str, Any]:
    out: dict[str, Any] = {"n_stats": state.n_stats, "n_brand": state.n_brand}
    for key in ("dense", "eigenvalues", "eigenvectors"):
        value = getattr(state, key)
        if value is not None:
            out[key] = value
    return out


def from_dict(state: dict[str, Any], xp: Any, device: Any) -> FactorState:
    def arr(key: str) -> Any:
        if key not in state:
            return None
        return xp.asarray(state[key], device=device)

    return FactorState(arr("dense"), arr("eigenvalues"), arr("eigenvectors"), int(state["n_stats"]), int(state["n_brand"]))
