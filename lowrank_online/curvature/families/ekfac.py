"""EKFAC and EKFAC-ra (paper 004): the Kronecker-factored eigenbasis with eigenvalue corrections.

The K-factors are exponentially averaged and diagonalised every ``T_inv`` statistics steps
(dense EVD, as for k-fac); the scalings ``S`` (one per Kronecker eigenvector) are a running
average of per-sample second moments in that basis (``ekfac``, Alg. 1) or of the mini-batch
gradient squared (``ekfac-ra``, Sec. 3.2).

Two choices keep both variants stable (measured on the digits example, 3 seeds x 10 epochs:
with either one undone, ekfac or ekfac-ra diverges or ends above its first-epoch loss):

* When the basis is recomputed, the running average is carried into the new basis instead of
  being restarted from one batch: the diagonal of the old approximation
  ``(Q_G ⊗ Q_A) diag(S) (Q_G ⊗ Q_A)^T`` in the new basis ``(P_G ⊗ P_A)`` is
  ``(R_G ∘ R_G) S (R_A ∘ R_A)^T`` with ``R = P^T Q``, at ``O(d_g^2 d_a + d_g d_a^2)``. A
  restart left the scalings of one batch, out of step with the average the basis came from.
* EKFAC-ra's batch statistic, the squared mini-batch mean gradient, is multiplied by the
  batch size ``N``: for centred per-sample gradients (Monte Carlo Fisher targets) the mean's
  second moment is ``diag(F) / N``, so the paper's raw statistic made the scalings ``N`` times
  EKFAC's too small and the steps ``N`` times too long.

Data-parallel processes can feed the factors as :class:`~lowrank_online.curvature.Gram` sums
instead of gathering rows: the scalings then need only the batch's *moments* in the basis the
update ends with, sums over the rows that add up across processes
(:func:`eigenbasis_moments`; :meth:`KFACPreconditioner.update` with ``moments=``). A decomposition
computed from Gram factors carries the scalings into the new basis and leaves the batch out; the
processes average it in when they install it with the moments.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ... import _array
from ...kronecker import ekfac_solve, ekfac_update
from .. import _state, factors
from ..config import CurvatureConfig
from ..damping import Damping, Spectrum, factor_dampings, squared_norm
from ..factors import FactorDecomposition, FactorState, Gram
from ..factors import check as factor_check
from ..registry import MethodSpec
from ._base import Family, LayerShape
from .pair import ea

__all__ = ["EKFACState", "EigenbasisPart", "batch_scalings", "eigenbasis_moments"]


class EKFACState(NamedTuple):
    A: FactorState  # input-side factor and its eigenbasis (kind "eigh")
    G: FactorState  # output-side factor and its eigenbasis
    scalings: Any  # d_g x d_a running average S in the current basis


class EigenbasisPart(NamedTuple):
    """What EKFAC's decomposition step writes: both eigenbases and the scalings in them (one part:
    the scalings need both bases)."""

    A: FactorDecomposition
    G: FactorDecomposition
    scalings: Any


def carry_scalings(S: Any, old: tuple[Any, Any], new: tuple[Any, Any]) -> Any:
    """``diag`` of the EKFAC matrix ``(old_G ⊗ old_A) diag(S) (...)^T`` in the basis ``new``."""
    R_G = new[0].T @ old[0]
    R_A = new[1].T @ old[1]
    return (R_G * R_G) @ S @ (R_A * R_A).T


def eigenbasis_moments(a: Any, g: Any, basis_g: Any, basis_a: Any, per_sample: bool) -> Any:
    """Sums over the rows of ``(a, g)`` of what the scalings need in the basis ``(Q_G, Q_A)``:
    ``sum_i (Q_G^T g_i)^2 (Q_A^T a_i)^{2T}`` (EKFAC) or the projected gradient
    ``Q_G^T (sum_i g_i a_i^T) Q_A`` (EKFAC-ra). Both add up over blocks of rows, so processes
    holding parts of a batch all-reduce them."""
    if per_sample:
        return ekfac_update(None, a, g, basis_g, basis_a, per_sample=True, check_finite=False) * a.shape[0]
    return basis_g.T @ (g.T @ a) @ basis_a


def batch_scalings(a: Any, g: Any, basis_g: Any, basis_a: Any, per_sample: bool, moments: Any = None) -> Any:
    """The batch's statistic of paper 004 Alg. 1 (``per_sample``) or Sec. 3.2 in the basis
    ``(Q_G, Q_A)``: from the rows ``(a, g)``, or from the :func:`eigenbasis_moments` of all of
    them (``a`` is then the batch's :class:`Gram`, which counts the rows)."""
    if moments is None:
        batch = ekfac_update(None, a, g, basis_g, basis_a, per_sample=per_sample, check_finite=False)
        n = a.shape[0]
        # The squared mini-batch mean gradient estimates diag(F) / N when the per-sample
        # gradients are centred (Monte Carlo Fisher targets): without the factor N, EKFAC-ra's
        # scalings were N times EKFAC's too small and its steps N times too long.
        return batch if per_sample else batch * n
    n = a.rows
    if per_sample:
        return moments / n
    mean = moments / n
    return (mean * mean) * n


def build(config: CurvatureConfig, method: MethodSpec, shape: LayerShape) -> Family:
    xp, d_a, d_g = shape.xp, shape.d_a, shape.d_g
    specs = {"A": factors.spec(method, "eigh", (config.seed, shape.index, 0)),
             "G": factors.spec(method, "eigh", (config.seed, shape.index, 1))}

    def init(a: Any, g: Any, step: int, compute: Any = None, moments: Any = None) -> EKFACState:
        empty = EKFACState(factors.empty_state("eigh"), factors.empty_state("eigh"), None)
        return update(empty, a, g, step, compute, moments)

    def due(state: EKFACState, step: int) -> tuple[str, ...]:
        return ("eigenbasis",) if factors.due(state.A, step, config) or factors.due(state.G, step, config) else ()

    def update(state: EKFACState, a: Any, g: Any, step: int, compute: Any = None, moments: Any = None) -> EKFACState:
        here = compute is None or "eigenbasis" in compute
        if not here and due(state, step):
            # The new bases come from elsewhere, and the scalings live in them: both are
            # installed together (install); only the factors' averages advance here.
            return EKFACState(factors.update(state.A, a, step, specs["A"], config, xp, decompose=False),
                              factors.update(state.G, g, step, specs["G"], config, xp, decompose=False),
                              state.scalings)
        new_a = factors.update(state.A, a, step, specs["A"], config, xp)
        new_g = factors.update(state.G, g, step, specs["G"], config, xp)
        S = state.scalings
        rebased = new_a.eigenvectors is not state.A.eigenvectors or new_g.eigenvectors is not state.G.eigenvectors
        if S is not None and rebased:
            S = carry_scalings(S, (state.G.eigenvectors, state.A.eigenvectors),
                               (new_g.eigenvectors, new_a.eigenvectors))
        if isinstance(a, Gram) and moments is None:
            # Gram factors without moments: a decomposition for processes that average the
            # batch in themselves (install with moments); the scalings are carried only.
            return EKFACState(new_a, new_g, S)
        batch = batch_scalings(a, g, new_g.eigenvectors, new_a.eigenvectors, method.per_sample, moments)
        return EKFACState(new_a, new_g, ea(S, batch, config.decay))

    def install(state: EKFACState, part: str, payload: EigenbasisPart, a: Any = None, g: Any = None,
                moments: Any = None) -> EKFACState:
        new = EKFACState(factors.install(state.A, payload.A), factors.install(state.G, payload.G), payload.scalings)
        if moments is None:
            return new
        # computed from Gram factors: the payload's scalings are the carried ones, before this batch
        batch = batch_scalings(a, g, new.G.eigenvectors, new.A.eigenvectors, method.per_sample, moments)
        return new._replace(scalings=ea(payload.scalings, batch, config.decay))

    def moments_of(state: EKFACState | None, a: Any, g: Any, payload: EigenbasisPart | None) -> Any:
        bases = payload if payload is not None else state
        return eigenbasis_moments(a, g, bases.G.eigenvectors, bases.A.eigenvectors, method.per_sample)

    def prepare(state: EKFACState, damping: Damping, step: int) -> EKFACState:
        return state

    def dampings(state: EKFACState, damping: Damping, step: int, grad_sq: float = 0.0) -> tuple[float]:
        top, total = _array.to_floats(xp, xp.max(state.scalings), xp.sum(state.scalings))
        return factor_dampings(config.damping_mode, damping.value, [Spectrum(top, total, d_g * d_a)],
                               floor=config.min_damping, total_floor=damping.floor(grad_sq))

    def precondition(state: EKFACState, grad: Any, damping: Damping, step: int, overwrite: bool = False) -> Any:
        (lam,) = dampings(state, damping, step, squared_norm(grad, xp) if damping.gradient else 0.0)
        return ekfac_solve(grad, state.scalings, state.G.eigenvectors, state.A.eigenvectors, damping=lam,
                           check_finite=False)

    def precondition_factored(state: EKFACState, G: Any, A: Any, damping: Damping, step: int) -> tuple[Any, Any]:
        step_matrix = precondition(state, G.T @ A, damping, step)
        return xp.eye(d_g, dtype=step_matrix.dtype, device=shape.device), step_matrix

    def describe(state: EKFACState, step: int) -> dict[str, Any]:
        return {
            "kinds": {"A": "eigh", "G": "eigh", "S": "scalings"},
            "held_rank": {"A": d_a, "G": d_g},
            "applied_rank": {"A": d_a, "G": d_g},
            "eigenvalues": {"A": state.A.eigenvalues, "G": state.G.eigenvalues, "S": state.scalings},
            "n_updates": state.A.n_stats,
        }

    def check(state: EKFACState, where: str) -> None:
        factor_check(state.A, d_a, "eigh", f"{where}/A")
        factor_check(state.G, d_g, "eigh", f"{where}/G")
        if state.scalings is None or tuple(state.scalings.shape) != (d_g, d_a):
            raise ValueError(f"checkpoint entry '{where}/scalings' must have shape {(d_g, d_a)}")
        _state.check_spectrum(xp.reshape(state.scalings, (-1,)), f"{where}/scalings", sorted_=False)

    def extract(state: EKFACState, part: str) -> EigenbasisPart:
        return EigenbasisPart(factors.decomposition(state.A), factors.decomposition(state.G), state.scalings)

    def check_part(part: str, payload: EigenbasisPart, where: str) -> None:
        for side, f, d in (("A", payload.A, d_a), ("G", payload.G, d_g)):
            if f.eigenvalues is None or tuple(f.eigenvectors.shape) != (d, d):
                raise ValueError(f"entry '{where}/{side}' must hold a full eigendecomposition of a {d} x {d} factor")
            _state.check_eigh(f.eigenvalues, f.eigenvectors, d, f"{where}/{side}")
        if payload.scalings is None:
            return  # a first decomposition from Gram factors: the scalings start with the batch
        if tuple(payload.scalings.shape) != (d_g, d_a):
            raise ValueError(f"entry '{where}/scalings' must have shape {(d_g, d_a)}")
        _state.check_spectrum(xp.reshape(payload.scalings, (-1,)), f"{where}/scalings", sorted_=False)

    return Family(init, update, prepare, dampings, precondition, precondition_factored, describe, check, EKFACState,
                  parts=("eigenbasis",), due=due, extract=extract, install=install,
                  part_types={"eigenbasis": EigenbasisPart}, check_part=check_part, moments=moments_of)
