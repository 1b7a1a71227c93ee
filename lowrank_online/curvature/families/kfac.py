"""The K-FAC family: two independently maintained K-factors (kfac, rkfac, bkfac, brkfac, bkfacc, auto).

Paper 001: the step is ``(Gamma + lambda_G I)^{-1} grad (A + lambda_A I)^{-1}`` with each
factor's inverse representation kept by :mod:`..factors` (dense EVD, randomized EVD or
B-updates); the linear-time factored application is Alg. 8.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ... import _validate
from .. import _state, factors
from ..config import CurvatureConfig
from ..damping import Damping, factor_dampings, factored_squared_norm, squared_norm
from ..factors import FactorDecomposition, FactorState
from ..factors import check as factor_check
from ..registry import MethodSpec
from ._base import Family, LayerShape

__all__ = ["KFACState"]


class KFACState(NamedTuple):
    A: FactorState  # input side, d_a x d_a
    G: FactorState  # output side, d_g x d_g


def build(config: CurvatureConfig, method: MethodSpec, shape: LayerShape) -> Family:
    xp, d_a, d_g = shape.xp, shape.d_a, shape.d_g
    seeds = {"A": (config.seed, shape.index, 0), "G": (config.seed, shape.index, 1)}

    def _kind(declared: str, d: int, n: int, step: int) -> str:
        return factors.choose_kind(config, d, n, step) if declared == "by-cost" else declared

    def init(a: Any, g: Any, step: int, compute: Any = None) -> KFACState:
        n = a.rows if isinstance(a, factors.Gram) else a.shape[0]
        empty = KFACState(factors.empty_state(_kind(method.kinds[0], d_a, n, step)),
                          factors.empty_state(_kind(method.kinds[1], d_g, n, step)))
        return update(empty, a, g, step, compute)

    def update(state: KFACState, a: Any, g: Any, step: int, compute: Any = None) -> KFACState:
        # The two factors are independent, so each one's decomposition can be computed on its
        # own process (compute names those done here; the others are installed afterwards).
        new_a = factors.update(state.A, a, step, factors.spec(method, state.A.kind, seeds["A"]), config, xp,
                               decompose=compute is None or "A" in compute)
        new_g = factors.update(state.G, g, step, factors.spec(method, state.G.kind, seeds["G"]), config, xp,
                               decompose=compute is None or "G" in compute)
        return KFACState(new_a, new_g)

    def due(state: KFACState, step: int) -> tuple[str, ...]:
        return tuple(side for side, f in (("A", state.A), ("G", state.G)) if factors.due(f, step, config))

    def extract(state: KFACState, part: str) -> FactorDecomposition:
        return factors.decomposition(getattr(state, part))

    def install(state: KFACState, part: str, payload: FactorDecomposition) -> KFACState:
        return state._replace(**{part: factors.install(getattr(state, part), payload)})

    def check_part(part: str, payload: FactorDecomposition, where: str) -> None:
        d = d_a if part == "A" else d_g
        if payload.eigenvalues is None:
            raise ValueError(f"entry '{where}/eigenvalues' is missing")
        _state.check_eigh(payload.eigenvalues, payload.eigenvectors, d, where)

    def prepare(state: KFACState, damping: Damping, step: int) -> KFACState:
        return state

    def dampings(state: KFACState, damping: Damping, step: int, grad_sq: float = 0.0) -> tuple[float, float]:
        r, c = config.rank_at(step), config.continuation
        spectra = [factors.spectrum(state.A, d_a, r, c, xp), factors.spectrum(state.G, d_g, r, c, xp)]
        return factor_dampings(config.damping_mode, damping.value, spectra, floor=config.min_damping,
                               total_floor=damping.floor(grad_sq))

    def precondition(state: KFACState, grad: Any, damping: Damping, step: int, overwrite: bool = False) -> Any:
        lam_a, lam_g = dampings(state, damping, step, squared_norm(grad, xp) if damping.gradient else 0.0)
        r, c = config.rank_at(step), config.continuation
        right = factors.solve(state.A, grad, lam_a, r, c, xp, rows=True, overwrite=overwrite)  # grad A^{-1}
        return factors.solve(state.G, right, lam_g, r, c, xp, overwrite=True)  # Gamma^{-1} grad A^{-1}

    def precondition_blocks(state: KFACState, blocks: list[Any], damping: Damping, step: int,
                            check_finite: str | None = None) -> list[Any]:
        grad_sq = sum(squared_norm(X, xp) for X in blocks) if damping.gradient else 0.0
        if check_finite is not None and not math.isfinite(grad_sq):
            raise _validate.NonFiniteError(f"`{check_finite}` contain NaN or infinity")
        lam_a, lam_g = dampings(state, damping, step, grad_sq)
        r, c = config.rank_at(step), config.continuation
        # the first solve tests the blocks (on their projection) before it writes into them
        blocks = factors.solve_blocks(state.A, blocks, lam_a, r, c, xp, rows=True, check_finite=check_finite)
        return factors.solve_blocks(state.G, blocks, lam_g, r, c, xp, rows=False)

    def precondition_factored(state: KFACState, G: Any, A: Any, damping: Damping, step: int) -> tuple[Any, Any]:
        # Alg. 8: (Gamma^{-1} G^T)(A A^{-1}): each factor O(r d N), never d_out x d_in.
        lam_a, lam_g = dampings(state, damping, step, factored_squared_norm(G, A, xp) if damping.gradient else 0.0)
        r, c = config.rank_at(step), config.continuation
        return (factors.solve(state.G, G, lam_g, r, c, xp, rows=True),
                factors.solve(state.A, A, lam_a, r, c, xp, rows=True))

    def describe(state: KFACState, step: int) -> dict[str, Any]:
        r = config.rank_at(step)
        sides = {"A": state.A, "G": state.G}
        return {
            "kinds": {side: f.kind for side, f in sides.items()},
            "held_rank": {side: int(f.eigenvalues.shape[0]) for side, f in sides.items()},
            "applied_rank": {side: int(factors.applied(f, r)[0].shape[0]) for side, f in sides.items()},
            "eigenvalues": {side: f.eigenvalues for side, f in sides.items()},
            "n_updates": state.A.n_stats,
        }

    def check(state: KFACState, where: str) -> None:
        for side, f, d in (("A", state.A, d_a), ("G", state.G, d_g)):
            factor_check(f, d, method.kinds[0 if side == "A" else 1], f"{where}/{side}")

    return Family(init, update, prepare, dampings, precondition, precondition_factored, describe, check, KFACState,
                  parts=("A", "G"), due=due, extract=extract, install=install,
                  part_types={"A": FactorDecomposition, "G": FactorDecomposition}, check_part=check_part,
                  precondition_blocks=precondition_blocks)
