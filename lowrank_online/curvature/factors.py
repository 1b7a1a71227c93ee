"""One K-factor of one layer: its exponential average and its inverse representation.

Pure functions over a :class:`FactorState`. The kinds (paper 001):

* ``"eigh"``: exact EVD of the dense EA factor every ``T_inv`` updates (k-fac);
* ``"reigh"``: randomized EVD of the dense EA factor every ``T_inv`` updates (r-kfac, Alg. 1);
* ``"brand"``: B-updates of a low-rank representation with each statistics batch every
  ``T_brand`` updates (b-kfac, Alg. 4): truncate to the held rank, then Brand's update with
  the batch. Optionally an RSVD overwrite every ``T_rsvd`` (b-r-kfac, Alg. 5) or a light
  correction every ``T_corct`` (b-kfac-c, Alg. 6-7); those two need the dense EA factor,
  pure b-kfac never forms a ``d x d`` matrix.

Statistics enter as ``X`` of shape ``N x d`` (rows are samples: activations ``a`` or
pre-activation gradients ``g``). The factor is ``E[x x^T] = X^T X / N``, and the EA follows
eq. (5) with ``kappa(0) = 1``.

Ranks. The *applied* rank (``config.rank``) is the number of leading eigenpairs used when a
gradient is preconditioned; the rest of the spectrum is continued (Sec. 3.5) or dropped. A
randomized EVD computes exactly that many. A B-representation is truncated to the *held*
rank (``config.held_rank``, default the applied rank) before each update, so between updates
it holds up to ``held + N`` eigenpairs, of which the leading ``rank`` are applied.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import _array, _linalg
from ..brand import DENSE_FRACTION

# The tracker's pure steps (B-update, light correction, re-orthonormalisation) are shared with
# LowRankEMA so that a K-factor follows exactly the documented tracker; they are not public API.
from ..ema import EMAState, _b_update, _correct, _reorthonormalized
from ..operators import as_operand
from ..randomized import reigh
from ..solve import _damped_solve, _damped_solve_blocks  # the validated kernels: the factors are checked when made
from . import _state
from .config import CurvatureConfig
from .damping import Spectrum
from .registry import MethodSpec

__all__: list[str] = []

# Fraction of the machine's GEMM rate reached by each kind of work, for the cost model of
# the "by-cost" kind (measured on the 2-core test machine, docs/performance.rst): large square products
# (the dense EA and the randomized EVD's products) run near the GEMM rate; the B-update's
# tall-skinny products with r + n columns reach about a quarter of it.
_GEMM_EFFICIENCY = {"dense": 0.8, "brand": 0.25}


class FactorSpec(NamedTuple):
    """How one K-factor is maintained (derived from the configuration and the method)."""

    kind: str  # "eigh", "reigh" or "brand"
    refresh: bool  # b-r-kfac: RSVD overwrite every T_rsvd
    correct: bool  # b-kfac-c: light correction every T_corct
    seed: tuple[int, ...]
    reorthonormalize_every: int = 100

    def keep_dense(self, config: CurvatureConfig) -> bool:
        if self.kind != "brand":
            return True
        return self.refresh or self.correct or config.bkfac_init == "reigh"


class Gram(NamedTuple):
    """A batch of statistics given by its factor instead of its rows: ``matrix = X^T X / rows``
    (``d x d``) for the ``rows x d`` batch ``X``.

    What data-parallel processes can sum (``sum_r X_r^T X_r``) instead of concatenating their
    rows; the dense kinds (``"eigh"``, ``"reigh"``) need nothing else of the batch
    (:meth:`KFACPreconditioner.update` takes it for methods whose factors are all dense).
    """

    matrix: Any
    rows: int


def gram_dtype(x: Any) -> Any:
    return x.matrix.dtype if isinstance(x, Gram) else x.dtype


def map_statistics(x: Any, fn: Any) -> Any:
    """``fn`` applied to the array of a statistics batch (rows or a :class:`Gram`)."""
    return Gram(fn(x.matrix), x.rows) if isinstance(x, Gram) else fn(x)


class FactorDecomposition(NamedTuple):
    """What a factor's decomposition writes into its :class:`FactorState`: the held
    representation and the B-update counter. It is what travels from the process that computes
    a decomposition to the others (:meth:`KFACPreconditioner.decompose`)."""

    eigenvalues: Any
    eigenvectors: Any
    n_brand: int


class FactorState(NamedTuple):
    kind: str  # the resolved kind ("by-cost" is resolved at the first update)
    dense: Any  # EA matrix (d x d), or None when the kind does not need it
    eigenvalues: Any  # held representation, descending (None before the first inverse)
    eigenvectors: Any
    n_stats: int  # statistics batches seen
    n_brand: int  # B-updates applied (brand kind)


def empty_state(kind: str) -> FactorState:
    return FactorState(kind, None, None, None, 0, 0)


def choose_kind(config: CurvatureConfig, d: int, n: int, step: int) -> str:
    """``"brand"`` or ``"reigh"`` for a ``"by-cost"`` factor of width ``d`` fed ``n`` rows.

    Cost model, flops per statistics step weighted by the measured efficiency of each kind of
    work (:data:`_GEMM_EFFICIENCY`): a B-update (:func:`decomposition_flops`) every ``T_brand``
    steps, against r-kfac's dense EA accumulated every step (the Gram matrix of the rows,
    ``d (d + 1) n``, the symmetric product's count) plus a randomized EVD every ``T_inv`` steps.
    """
    per_step_brand = decomposition_flops("brand", d, n, config, step) * config.T_updt / config.T_brand
    ea = d * (d + 1.0) * n / _GEMM_EFFICIENCY["dense"]
    per_step_reigh = ea + decomposition_flops("reigh", d, n, config, step) * config.T_updt / config.T_inv
    return "brand" if per_step_brand <= per_step_reigh else "reigh"


def decomposition_flops(kind: str, d: int, n: int, config: CurvatureConfig, step: int) -> float:
    """Cost of one decomposition of a width-``d`` factor fed ``n`` rows, in flops weighted by the
    efficiency of each kind of work (without the dense EA, which every process computes for
    itself). The counts are those of ``benchmarks/_measure.py`` (the library cannot import it):

    * ``"eigh"``: ``~ 9 d^3``;
    * ``"reigh"``: ``(q + 1)`` products of ``2 d^2 k`` flops with ``k = r + p``, plus
      ``~ 8 (q + 1) d k^2`` for the orthonormalisation;
    * ``"brand"``: the B-update in tall-skinny products, ``4 d r n`` (projection and residual)
      ``+ d n (n + 1)`` (the residual's Gram matrix) ``+ 2 d (r + n) r`` (the rotation into the
      ``r`` held columns); once ``r + n >= 3d/4``, the wide-increment route of
      :func:`~lowrank_online.eigh_update` instead: ``d (d + 1) (n + r)`` for the d x d matrix
      and ``~ 9 d^3`` for its EVD.

    :func:`choose_kind` compares them; :class:`lowrank_online.torch.KFAC` balances them between
    processes when it assigns each decomposition to one of them.
    """
    if kind == "eigh":
        return 9.0 * d**3 / _GEMM_EFFICIENCY["dense"]
    if kind == "reigh":
        k = min(config.rank_at(step) + config.oversample_at(step), d)
        return (config.n_iter + 1) * (2.0 * d * d * k + 8.0 * d * k * k) / _GEMM_EFFICIENCY["dense"]
    r = min(config.held_rank_at(step), d)
    if r + n >= DENSE_FRACTION * d:
        return (d * (d + 1.0) * (n + r) + 9.0 * d**3) / _GEMM_EFFICIENCY["dense"]
    return (4.0 * d * r * n + d * n * (n + 1.0) + 2.0 * d * (r + n) * r) / _GEMM_EFFICIENCY["brand"]


def spec(method: MethodSpec, kind: str, seed: tuple[int, ...]) -> FactorSpec:
    return FactorSpec(kind=kind, refresh=method.refresh, correct=method.correct, seed=seed)


def _rng(spec: FactorSpec, k: int) -> np.random.Generator:
    return np.random.default_rng([*spec.seed, k])


def _decomposition_dtype(config: CurvatureConfig, M: Any, xp: Any) -> Any:
    if config.inv_dtype is None:
        return M.dtype
    return getattr(xp, config.inv_dtype)


def _dense_inverse(spec: FactorSpec, kind: str, M: Any, k: int, config: CurvatureConfig, xp: Any) -> tuple[Any, Any]:
    """EVD (or randomized EVD at the applied rank) of the dense factor, in ``inv_dtype``."""
    d = M.shape[0]
    dt = _decomposition_dtype(config, M, xp)
    Mc = _array.astype(M, dt, xp)
    rank = min(config.rank_at(k), d)
    if kind == "eigh" or rank >= d:
        w, V = _linalg.small_eigh(Mc, xp)
        w = xp.clip(w, min=0.0)
    else:
        res = reigh(Mc, rank, oversample=config.oversample_at(k), n_iter=config.n_iter, seed=_rng(spec, k),
                    check_finite=False)
        w, V = res.eigenvalues, res.eigenvectors
    return _array.astype(w, M.dtype, xp), _array.astype(V, M.dtype, xp)


def _due(n_stats: int, k: int, period: int) -> bool:
    return n_stats == 0 or k % period == 0


def due(state: FactorState, k: int, config: CurvatureConfig) -> bool:
    """Whether :func:`update` at step ``k`` recomputes the representation (an EVD, a randomized
    EVD, or a B-update with its refresh or correction)."""
    return _due(state.n_stats, k, config.T_brand if state.kind == "brand" else config.T_inv)


def decomposition(state: FactorState) -> FactorDecomposition:
    return FactorDecomposition(state.eigenvalues, state.eigenvectors, state.n_brand)


def install(state: FactorState, part: FactorDecomposition) -> FactorState:
    return state._replace(eigenvalues=part.eigenvalues, eigenvectors=part.eigenvectors, n_brand=part.n_brand)


def update(state: FactorState, X: Any, k: int, spec: FactorSpec, config: CurvatureConfig, xp: Any,
           decompose: bool = True) -> FactorState:
    """Incorporate one statistics batch ``X`` (N x d) at preconditioner step ``k``.

    ``decompose=False`` advances the statistics (the dense EA, the counter) and leaves a
    representation that :func:`due` says is due undone: the state keeps the previous one until
    :func:`install` puts in one computed elsewhere (on another process, from the same batch).

    ``X`` may be a :class:`Gram` (the batch's factor) for the dense kinds.

    Raises :class:`~lowrank_online.DecompositionError` when an inverse cannot be computed; the
    caller keeps the old state.
    """
    first = state.n_stats == 0
    kind = state.kind
    if isinstance(X, Gram) and kind == "brand":
        raise ValueError("a B-updated factor needs the rows of its statistics, not their Gram matrix")
    n, d = (X.rows, X.matrix.shape[0]) if isinstance(X, Gram) else X.shape
    dense, L, Q, n_brand = state.dense, state.eigenvalues, state.eigenvectors, state.n_brand
    old_dense = dense
    if spec._replace(kind=kind).keep_dense(config):
        batch = X.matrix if isinstance(X, Gram) else (X.T @ X) / n
        dense = batch if first else config.decay * dense + (1.0 - config.decay) * batch
    if not decompose:
        pass
    elif kind == "brand":
        if first and config.bkfac_init == "reigh":
            L, Q = _dense_inverse(spec, "reigh", dense, k, config, xp)
            n_brand = 1
        elif _due(state.n_stats, k, config.T_brand):
            ema_state = EMAState(L, Q, n_brand)
            held = min(config.held_rank_at(k), d)
            if not first and spec.refresh and k % config.T_rsvd == 0:
                # Alg. 5: overwrite "B_{k-1}" with the RSVD of the EA factor before this batch.
                R = reigh(old_dense, held, oversample=config.oversample_at(k), n_iter=config.n_iter,
                          seed=_rng(spec, k), check_finite=False)
                ema_state = EMAState(R.eigenvalues, R.eigenvectors, n_brand)
            ema_state = _b_update(ema_state, X.T / math.sqrt(n), held, config.decay, xp)
            if spec.correct and k % config.T_corct == 0:
                # Alg. 7: correct against the current EA factor M_k, n_crc = phi_crc * r modes.
                pool = min(held, ema_state.eigenvalues.shape[0])
                n_modes = max(1, int(round(config.phi_crc * pool)))
                idx = _array.choice(_rng(spec, k), pool, n_modes)
                ema_state = _correct(ema_state, as_operand(dense, "dense", check_finite=False), idx, xp)
            ema_state = _reorthonormalized(ema_state, n_brand, spec.reorthonormalize_every or None, xp)
            L, Q, n_brand = ema_state
    elif _due(state.n_stats, k, config.T_inv):
        L, Q = _dense_inverse(spec, kind, dense, k, config, xp)
    return FactorState(kind, dense, L, Q, state.n_stats + 1, n_brand)


def applied(state: FactorState, rank: int) -> tuple[Any, Any]:
    """The leading ``rank`` eigenpairs of the held representation (what a solve applies).

    Full-rank kinds (``"eigh"``) are applied whole.
    """
    L, Q = state.eigenvalues, state.eigenvectors
    if state.kind == "eigh" or L.shape[0] <= rank:
        return L, Q
    return L[:rank], Q[:, :rank]


def spectrum(state: FactorState, d: int, rank: int, continuation: bool, xp: Any) -> Spectrum:
    """Largest eigenvalue and trace of the applied matrix (continued tail included)."""
    L, _ = applied(state, rank)
    if L.shape[0] == 0:
        return Spectrum(0.0, 0.0, d)
    top, total, last = _array.to_floats(xp, L[0], xp.sum(L), L[-1])
    if continuation and L.shape[0] < d:
        total += (d - L.shape[0]) * last
    return Spectrum(top, total, d)


def solve(state: FactorState, Y: Any, damping: float, rank: int, continuation: bool, xp: Any, *,
          rows: bool = False, overwrite: bool = False) -> Any:
    """``(M + damping I)^{-1} Y`` with the applied representation (paper 001, Alg. 1 l. 16-17);
    ``rows=True``: ``Y (M + damping I)^{-1}`` for ``Y`` of shape (k, d); ``overwrite=True``: the
    caller owns ``Y``, which may hold the result."""
    L, Q = applied(state, rank)
    return _damped_solve(L, Q, Y, damping, continuation, xp, rows=rows, overwrite_x=overwrite)


def solve_blocks(state: FactorState, blocks: list[Any], damping: float, rank: int, continuation: bool, xp: Any, *,
                 rows: bool, check_finite: str | None = None) -> list[Any]:
    """:func:`solve` in place on a matrix given as column blocks (see ``_damped_solve_blocks``,
    whose ``check_finite`` tests them on their projection)."""
    L, Q = applied(state, rank)
    return _damped_solve_blocks(L, Q, blocks, damping, continuation, xp, rows=rows, check_finite=check_finite)


def check(state: FactorState, d: int, declared: str, where: str) -> None:
    """``ValueError`` naming the entry when a restored factor is inconsistent."""
    allowed = ("brand", "reigh") if declared == "by-cost" else (declared,)
    if state.kind not in allowed:
        raise ValueError(f"checkpoint entry '{where}/kind' must be one of {list(allowed)}, got {state.kind!r}")
    _state.check_square(state.dense, d, f"{where}/dense")
    _state.check_eigh(state.eigenvalues, state.eigenvectors, d, where)
    if state.eigenvalues is None and state.n_stats:
        raise ValueError(f"checkpoint entry {where!r} has {state.n_stats} statistics batches but no representation")
    if state.dense is None and state.kind != "brand":
        raise ValueError(f"checkpoint entry '{where}/dense' is missing")
