"""Two positive semi-definite factors from another estimator than K-FAC's: tkfac and kpsvd.

* ``tkfac`` (paper 003): EA of ``delta``, ``Phi``, ``Psi`` (eq. (4.9)); the factors
  ``sqrt(delta) Psi`` (output side) and ``sqrt(delta) Phi`` (input side) are treated like
  K-FAC's, which is eq. (5.15)'s damping in the relative mode.
* ``kpsvd`` (paper 002, Sec. 3.1): the nearest Kronecker product of each batch's Fisher block,
  matrix-free and warm-started from the average, EA'd factor by factor (Sec. 2.2). Both
  factors are PSD (Prop. 3.2).

Both are full-rank representations, decomposed every ``T_inv`` statistics steps, and support
the linear-time factored application.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

import numpy as np

from ... import _array, _linalg
from ...kronecker import KronSum, kpsvd, tkfac_factors
from ...solve import _damped_solve  # the validated solve's kernel: the factors are checked when they are made
from .. import _state
from ..config import CurvatureConfig
from ..damping import Damping, Spectrum, factor_dampings, factored_squared_norm, squared_norm
from ..registry import MethodSpec
from ._base import Family, LayerShape

__all__ = ["PairState"]


class PairState(NamedTuple):
    delta: Any  # tkfac: EA of delta, shape (1,); None for kpsvd
    left: Any  # d_g x d_g: EA of Psi (tkfac) or of the left factor L (kpsvd)
    right: Any  # d_a x d_a: EA of Phi (tkfac) or of the right factor R (kpsvd)
    left_values: Any  # EVD of the left factor used by the solves (recomputed every T_inv)
    left_vectors: Any
    right_values: Any
    right_vectors: Any
    n_stats: int


@contextmanager
def inner_solve() -> Iterator[None]:
    """The per-batch matrix-free solves are warm-started and capped at ``kron_max_iter``;
    stopping there is expected (the factors are averaged across batches), so their
    non-convergence warning is not passed on. Every other warning is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*did not converge.*", category=RuntimeWarning)
        yield


def ea(old: Any, new: Any, decay: float) -> Any:
    """Exponential average with ``kappa(0) = 1`` (paper 001, eq. (5))."""
    return new if old is None else decay * old + (1.0 - decay) * new


def psd_eigh(M: Any, xp: Any) -> tuple[Any, Any]:
    w, V = _linalg.small_eigh(M, xp)
    return xp.clip(w, min=0.0), V


def build(config: CurvatureConfig, method: MethodSpec, shape: LayerShape) -> Family:
    xp, d_a, d_g = shape.xp, shape.d_a, shape.d_g

    def _tkfac(state: PairState, a: Any, g: Any, step: int) -> tuple[Any, Any, Any, Any, Any]:
        t = tkfac_factors(a, g, check_finite=False)
        delta = ea(state.delta, xp.reshape(t.delta, (1,)), config.decay)
        Psi, Phi = ea(state.left, t.Psi, config.decay), ea(state.right, t.Phi, config.decay)
        root = xp.sqrt(delta[0])
        return delta, Psi, Phi, root * Psi, root * Phi

    def _kpsvd(state: PairState, a: Any, g: Any, step: int) -> tuple[Any, Any, Any, Any, Any]:
        init = None if state.left is None else KronSum((state.left,), (state.right,))
        with inner_solve():
            rng = np.random.default_rng([config.seed, shape.index, step])
            ks = kpsvd(a, g, terms=1, method="power", init=init, seed=rng, tol=config.kron_tol,
                       max_iter=config.kron_max_iter, check_finite=False)
        L, R = ea(state.left, ks.left[0], config.decay), ea(state.right, ks.right[0], config.decay)
        return None, L, R, L, R

    estimate = {"trace-restricted": _tkfac, "nearest": _kpsvd}[method.estimator]

    def init(a: Any, g: Any, step: int, compute: Any = None) -> PairState:
        return update(PairState(None, None, None, None, None, None, None, 0), a, g, step)

    def update(state: PairState, a: Any, g: Any, step: int, compute: Any = None) -> PairState:
        delta, left_ea, right_ea, left, right = estimate(state, a, g, step)
        lv, lq, rv, rq = state.left_values, state.left_vectors, state.right_values, state.right_vectors
        if state.n_stats == 0 or step % config.T_inv == 0:
            lv, lq = psd_eigh(left, xp)
            rv, rq = psd_eigh(right, xp)
        return PairState(delta, left_ea, right_ea, lv, lq, rv, rq, state.n_stats + 1)

    def prepare(state: PairState, damping: Damping, step: int) -> PairState:
        return state

    def dampings(state: PairState, damping: Damping, step: int, grad_sq: float = 0.0) -> tuple[float, float]:
        """(input side, output side), as for K-FAC."""
        spectra = []
        for values, d in ((state.right_values, d_a), (state.left_values, d_g)):
            top, total = _array.to_floats(xp, values[0], xp.sum(values))
            spectra.append(Spectrum(top, total, d))
        return factor_dampings(config.damping_mode, damping.value, spectra, floor=config.min_damping,
                               total_floor=damping.floor(grad_sq))

    def precondition(state: PairState, grad: Any, damping: Damping, step: int, overwrite: bool = False) -> Any:
        lam_r, lam_l = dampings(state, damping, step, squared_norm(grad, xp) if damping.gradient else 0.0)
        right = _damped_solve(state.right_values, state.right_vectors, grad, lam_r, False, xp, rows=True,
                              overwrite_x=overwrite)
        return _damped_solve(state.left_values, state.left_vectors, right, lam_l, False, xp, overwrite_x=True)

    def precondition_factored(state: PairState, G: Any, A: Any, damping: Damping, step: int) -> tuple[Any, Any]:
        lam_r, lam_l = dampings(state, damping, step, factored_squared_norm(G, A, xp) if damping.gradient else 0.0)
        G_t = _damped_solve(state.left_values, state.left_vectors, G, lam_l, False, xp, rows=True)
        A_t = _damped_solve(state.right_values, state.right_vectors, A, lam_r, False, xp, rows=True)
        return G_t, A_t

    def describe(state: PairState, step: int) -> dict[str, Any]:
        return {
            "kinds": {"A": "eigh", "G": "eigh"},
            "held_rank": {"A": d_a, "G": d_g},
            "applied_rank": {"A": d_a, "G": d_g},
            "eigenvalues": {"A": state.right_values, "G": state.left_values},
            "n_updates": state.n_stats,
        }

    def check(state: PairState, where: str) -> None:
        _state.check_square(state.left, d_g, f"{where}/left")
        _state.check_square(state.right, d_a, f"{where}/right")
        _state.check_eigh(state.left_values, state.left_vectors, d_g, where, ("left_values", "left_vectors"))
        _state.check_eigh(state.right_values, state.right_vectors, d_a, where, ("right_values", "right_vectors"))
        if state.left_values is None or state.left is None or state.right is None:
            raise ValueError(f"checkpoint entry {where!r} lacks its factors or their decompositions")

    return Family(init, update, prepare, dampings, precondition, precondition_factored, describe, check, PairState)
