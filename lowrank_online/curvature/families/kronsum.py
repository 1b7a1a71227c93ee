"""Two-term Kronecker sums solved exactly: deflation, lanczos, kfac-corrected (paper 002, Sec. 3.2-3.4).

Each statistics batch gives a two-term sum ``L_0 ⊗ R_0 + L_1 ⊗ R_1`` of its Fisher block
(deflation, Lanczos bidiagonalisation, or K-FAC plus its best correction), EA'd term by term
(each new term sign-aligned with the average first, since ``(-L) ⊗ (-R) = L ⊗ R``). Every
``T_inv`` steps the average is frozen for the solves, which use
:class:`~lowrank_online.KronSumInverse` on the damped sum (Sec. 3.4): the first term's
factors are damped like K-FAC's (:mod:`..damping`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from ... import _array, _linalg
from ...kronecker import KronSum, KronSumInverse, kfac_corrected, kpsvd
from .. import _state
from ..config import CurvatureConfig
from ..damping import Damping, Spectrum, factor_dampings, squared_norm
from ..registry import MethodSpec
from ._base import Family, LayerShape
from .pair import ea, inner_solve

__all__ = ["KronSumState", "KronTerms", "SumSolver"]

# The damped sum is solved as positive definite: pencil eigenvalues 1 + s1_i s2_j below this
# are raised to it, i.e. the sum is never taken below a tenth of the damped first term. A
# two-term fit of a PSD Fisher block is fitted in Frobenius norm and can be indefinite; solved
# as given, its negative or near-zero eigenvalues turned steps around or blew them up
# (deflation's loss went 0.81 -> 53 on the digits example). Measured on that example over 3
# seeds and 10 epochs, floors 0.1, 0.5 and 1 all removed the divergence with the same final
# losses; the lowest leaves every safely definite sum solved exactly.
PENCIL_FLOOR = 0.1


class KronTerms(NamedTuple):
    """``L0 ⊗ R0 + L1 ⊗ R1``: left factors d_g x d_g, right factors d_a x d_a."""

    L0: Any
    R0: Any
    L1: Any
    R1: Any


class SumSolver(NamedTuple):
    """The generalised eigendecomposition of the damped frozen sum, for one damping value."""

    basis_left: Any
    basis_right: Any
    eigenvalues: Any  # max(1 + s1 s2^T, PENCIL_FLOOR), d_g x d_a (the pencil's eigenvalues)
    damping_left: float  # the dampings of L0 and R0 it was built for
    damping_right: float
    n_inv: int  # the frozen sum it was built from


class KronSumState(NamedTuple):
    average: KronTerms  # the running average
    frozen: KronTerms  # the average at the last inverse step, used by the solves
    spectra: Any  # (4,): largest eigenvalue and trace of the frozen R0, then of L0 (for the damping)
    solver: SumSolver | None
    n_stats: int
    n_inv: int


def build(config: CurvatureConfig, method: MethodSpec, shape: LayerShape) -> Family:
    xp, d_a, d_g = shape.xp, shape.d_a, shape.d_g

    def _batch_sum(state: KronSumState | None, a: Any, g: Any, step: int) -> KronSum:
        rng = np.random.default_rng([config.seed, shape.index, step])
        with inner_solve():
            if method.estimator == "corrected":
                return kfac_corrected(a, g, seed=rng, tol=config.kron_tol, max_iter=config.kron_max_iter,
                                      check_finite=False)
            avg = None if state is None else state.average
            init = None if avg is None else KronSum((avg.L0, avg.L1), (avg.R0, avg.R1))
            return kpsvd(a, g, terms=2, method=method.estimator, init=init, seed=rng, tol=config.kron_tol,
                         max_iter=config.kron_max_iter, check_finite=False)

    def _average(old: KronTerms | None, ks: KronSum) -> KronTerms:
        terms = []
        for i in range(2):
            L, R = ks.left[i], ks.right[i]
            if old is not None and float(xp.sum(L * old[2 * i])) < 0.0:
                L, R = -L, -R  # the same product, aligned with the running average
            terms += [ea(None if old is None else old[2 * i], L, config.decay),
                      ea(None if old is None else old[2 * i + 1], R, config.decay)]
        return KronTerms(*terms)

    def _spectra(terms: KronTerms) -> Any:
        """Largest eigenvalue and trace of R0 and L0, once per frozen sum (not per solve)."""
        out = []
        for M in (terms.R0, terms.L0):
            w = _linalg.small_eigh(M, xp)[0]
            out += [w[0], xp.sum(w)]
        return xp.stack(out)

    def init(a: Any, g: Any, step: int, compute: Any = None) -> KronSumState:
        average = _average(None, _batch_sum(None, a, g, step))
        return KronSumState(average, average, _spectra(average), None, 1, 1)

    def update(state: KronSumState, a: Any, g: Any, step: int, compute: Any = None) -> KronSumState:
        average = _average(state.average, _batch_sum(state, a, g, step))
        if step % config.T_inv == 0:
            # the old solver stays (stale, told by its n_inv) as the fallback of the next solve
            return KronSumState(average, average, _spectra(average), state.solver, state.n_stats + 1, state.n_inv + 1)
        return state._replace(average=average, n_stats=state.n_stats + 1)

    def dampings(state: KronSumState, damping: Damping, step: int, grad_sq: float = 0.0) -> tuple[float, float]:
        """(input side R0, output side L0): the first term is damped like K-FAC's factors."""
        top_r, tr_r, top_l, tr_l = _array.to_floats(xp, *(state.spectra[i] for i in range(4)))
        spectra = [Spectrum(top_r, tr_r, d_a), Spectrum(top_l, tr_l, d_g)]
        return factor_dampings(config.damping_mode, damping.value, spectra, floor=config.min_damping,
                               total_floor=damping.floor(grad_sq))

    def _solver(state: KronSumState, lam_r: float, lam_l: float) -> SumSolver:
        t = state.frozen
        # KronSumInverse puts pi sqrt(lambda) on its first factor and sqrt(lambda) / pi on the
        # second: lambda = lam_l lam_r and pi = sqrt(lam_l / lam_r) give lam_l on L0, lam_r on R0.
        inv = KronSumInverse(t.L0, t.R0, t.L1, t.R1, damping=lam_l * lam_r, pi=math.sqrt(lam_l / lam_r),
                             eigenvalue_floor=PENCIL_FLOOR, check_finite=False)
        return SumSolver(inv.basis_left, inv.basis_right, inv.eigenvalues, lam_l, lam_r, state.n_inv)

    def _current(state: KronSumState, lam_r: float, lam_l: float) -> bool:
        s = state.solver
        return s is not None and s.n_inv == state.n_inv and (s.damping_left, s.damping_right) == (lam_l, lam_r)

    def _solver_or_previous(state: KronSumState, lam_r: float, lam_l: float) -> SumSolver:
        """A new solver, or the previous one (with a warning) when the new sum cannot be solved."""
        try:
            return _solver(state, lam_r, lam_l)
        except _linalg._LINALG_ERRORS as err:
            if state.solver is None:
                raise _linalg.DecompositionError(f"the damped Kronecker sum cannot be solved: {err}") from err
            warnings.warn(f"the damped Kronecker sum cannot be solved ({err}); the previous solver is kept",
                          RuntimeWarning, stacklevel=4)
            return state.solver

    def prepare(state: KronSumState, damping: Damping, step: int) -> KronSumState:
        # Without a gradient floor the dampings depend on the state alone: build the solver once
        # per frozen sum and damping value. With one, it is built per gradient (precondition).
        lam_r, lam_l = dampings(state, damping, step)
        if damping.gradient or _current(state, lam_r, lam_l):
            return state
        solver = _solver_or_previous(state, lam_r, lam_l)
        # a failed rebuild keeps the old solver, marked current so that it is not retried per step
        return state._replace(solver=solver._replace(damping_left=lam_l, damping_right=lam_r, n_inv=state.n_inv))

    def precondition(state: KronSumState, grad: Any, damping: Damping, step: int, overwrite: bool = False) -> Any:
        lam_r, lam_l = dampings(state, damping, step, squared_norm(grad, xp) if damping.gradient else 0.0)
        s = state.solver if _current(state, lam_r, lam_l) else _solver_or_previous(state, lam_r, lam_l)
        K1, K2 = s.basis_left, s.basis_right
        return K1 @ (((K1.T @ grad) @ K2) / s.eigenvalues) @ K2.T

    def precondition_factored(state: KronSumState, G: Any, A: Any, damping: Damping, step: int) -> tuple[Any, Any]:
        step_matrix = precondition(state, G.T @ A, damping, step)
        return xp.eye(d_g, dtype=step_matrix.dtype, device=shape.device), step_matrix

    def describe(state: KronSumState, step: int) -> dict[str, Any]:
        return {
            "kinds": {"sum": f"{method.estimator} (2 terms)"},
            "held_rank": {"A": d_a, "G": d_g},
            "applied_rank": {"A": d_a, "G": d_g},
            # the pencil's eigenvalues 1 + s1 s2^T of the last solve (none before the first)
            "eigenvalues": {} if state.solver is None else {"pencil": state.solver.eigenvalues},
            "n_updates": state.n_stats,
        }

    def check(state: KronSumState, where: str) -> None:
        if tuple(state.spectra.shape) != (4,):
            raise ValueError(
                f"checkpoint entry '{where}/spectra' must have shape (4,), got {tuple(state.spectra.shape)}"
            )
        for group in ("average", "frozen"):
            terms = getattr(state, group)
            for name in ("L0", "L1"):
                _state.check_square(getattr(terms, name), d_g, f"{where}/{group}/{name}")
            for name in ("R0", "R1"):
                _state.check_square(getattr(terms, name), d_a, f"{where}/{group}/{name}")

    return Family(init, update, prepare, dampings, precondition, precondition_factored, describe, check, KronSumState)
