"""Exponential-average tracking of ``sum kappa(i) rho^(k-i) A_i A_i^T`` as a low-rank EVD.

Paper 001: process (8)/(10) and Alg. 4 (B-update), Alg. 5 (RSVD overwrite, B-R-KFAC),
Alg. 6 (light subspace correction, B-KFAC-C). The arithmetic lives in pure functions over an
:class:`EMAState`; :class:`LowRankEMA` is a thin shell that validates input, calls them and
swaps in the new state only when they return.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

from . import _array, _linalg
from ._results import EighResult
from .brand import _dense_regime, _eigh_update
from .operators import as_operand
from .randomized import reigh
from .solve import _damped_solve

__all__ = ["LowRankEMA"]


class EMAState(NamedTuple):
    """State of a tracker: plain arrays and numbers only."""

    eigenvalues: Any  # (m,) descending, or None before the first update
    eigenvectors: Any  # (d, m), or None before the first update
    n_updates: int


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def _b_update(state: EMAState, A: Any, rank: int, decay: float, xp: Any) -> EMAState:
    """One step of process (10): truncate to ``rank``, then Brand with (rho L, sqrt(1-rho) A).

    The first term enters unscaled (kappa(0) = 1, eq. (5)/(8)): ``M_0 = A_0 A_0^T``.
    """
    if state.eigenvectors is None:
        dev = _array.device(A)
        empty_q = A[:, :0]  # (d, 0), with A's rows (and row chunks on a distributed backend)
        empty_l = xp.zeros((0,), dtype=A.dtype, device=dev)
        res = _eigh_update(empty_l, empty_q, A, 1.0, 1.0, None, xp)
    else:
        keep = min(rank, state.eigenvalues.shape[0])
        L, Q = state.eigenvalues[:keep], state.eigenvectors[:, :keep]
        res = _eigh_update(L, Q, A, decay, 1.0 - decay, None, xp)
    return EMAState(res.eigenvalues, res.eigenvectors, state.n_updates + 1)


def _restore_orthonormality(L: Any, Q: Any, xp: Any) -> EighResult:
    """Re-orthonormalise a drifted basis without changing the represented matrix.

    With ``G = Q^T Q``, the polar factor ``Q G^{-1/2}`` is the orthonormal basis nearest to Q,
    and ``Q L Q^T = (Q G^{-1/2}) (G^{1/2} L G^{1/2}) (Q G^{-1/2})^T``: the small middle matrix
    is diagonalised again. Cost ``4 d m^2`` flops; a no-op when Q is orthonormal to
    ``100 eps``.
    """
    be = _array.Backend.of(Q, xp)
    cxp = be.cxp
    m = Q.shape[1]
    be.prefetch(L)
    G = be.to_core(Q.T @ Q)
    if m == 0 or float(cxp.max(cxp.abs(G - be.eye(m)))) <= 100 * be.eps:
        return EighResult(L, Q)
    mu, V = _linalg.small_eigh(G, cxp)
    root = cxp.sqrt(mu)
    half = (V * root[None, :]) @ V.T
    lam, U = _linalg.small_eigh(half @ _linalg.diag(be.to_core(L), cxp) @ half, cxp)
    Q_new, _ = _linalg.flip_signs(be.matmul(Q, be.from_core((V / root[None, :]) @ V.T @ U)), xp, be)
    return EighResult(be.from_core(cxp.clip(lam, min=0.0)), be.detach(Q_new))


def _correct(state: EMAState, X: Any, idx: list[int], xp: Any) -> EMAState:
    """Light correction (Alg. 6): make the held representation agree with ``X`` on the span
    of the chosen eigenvectors, then re-sort the spectrum.

    ``X`` is an operand (array or operator) with ``matmat``.
    """
    L, Q = state.eigenvalues, state.eigenvectors
    be = _array.Backend.of(Q, xp)
    m = Q.shape[1]
    L, lxp = be.local(L)  # the spectrum is small: reordered where it lives (the host on Dask)
    chosen = lxp.asarray(idx, dtype=lxp.int64, device=_array.device(L))
    rest = lxp.asarray([i for i in range(m) if i not in set(idx)], dtype=lxp.int64, device=_array.device(L))
    Qc = be.persist(xp.take(Q, chosen, axis=1))
    lam, U = _linalg.small_eigh(be.to_core(Qc.T @ X.matmat(Qc)), be.cxp)
    Qc = be.matmul(Qc, be.from_core(U))
    lam = be.from_core(be.cxp.clip(lam, min=0.0))
    L_all = lxp.concat([lxp.take(L, rest, axis=0), be.local(lam)[0]])
    Q_all = be.join_columns([xp.take(Q, rest, axis=1), Qc])
    order = lxp.argsort(L_all, descending=True, stable=True)
    Q_new, _ = _linalg.flip_signs(xp.take(Q_all, order, axis=1), xp, be)
    return EMAState(be.distribute(lxp.take(L_all, order, axis=0)), be.detach(Q_new), state.n_updates)


# --------------------------------------------------------------------------------------------
# the stateful shell
# --------------------------------------------------------------------------------------------
class LowRankEMA:
    r"""Low-rank eigendecomposition of an exponential average of Gram matrices.

    Tracks (paper 001, eq. (5) and (8))

    .. math:: M_k = \sum_{i=0}^{k} \kappa(i)\, \rho^{k-i} A_i A_i^T, \qquad
              \kappa(i) = 1 - \rho\, \mathbb{1}\{i > 0\},

    i.e. ``M_0 = A_0 A_0^T`` (the first term is **not** scaled by ``1 - rho``) and
    ``M_k = rho M_{k-1} + (1 - rho) A_k A_k^T``, held as ``Q diag(L) Q^T`` with at most
    ``min(d, rank + n)`` columns.

    Parameters
    ----------
    rank : int
        Truncation rank ``r`` applied before each update (paper 001, Alg. 4 lines 3-4).
    decay : float, optional
        ``rho`` in (0, 1]; default 0.95 (paper 001, Sec. 6).
    reorthonormalize_every : int or None, optional
        Every this many updates, measure ``|Q^T Q - I|`` (``2 d m^2`` flops) and, if it
        exceeds 100 eps, restore orthonormality without changing the represented matrix.
        Brand's update loses a few ulps of orthogonality per call on data that lies mostly
        in the held span; this keeps long runs at rounding level. Default 100; None disables.

    Attributes
    ----------
    eigenvalues : array or None
        Held eigenvalues, descending (None before the first update).
    eigenvectors : array or None
        Held orthonormal eigenvectors, d x m.
    n_updates : int
        Number of B-updates applied.

    Notes
    -----
    :meth:`update` is the B-update of Alg. 4: truncate the held representation to
    ``rank``, then apply the symmetric Brand update (:func:`~lowrank_online.eigh_update`) with
    ``(rho L, sqrt(1 - rho) A)``. The held matrix is exactly process (10) of the paper; its
    error against the true ``M_k`` is analysed there (Prop. 3.1-4.2). Cost per update
    ``O(d (r + n)^2)``: linear in d.

    Batches at least as wide as ``3d/4 - r`` (in particular more columns than the dimension,
    as a convolution layer's ``batch x positions`` statistics have) enter through
    ``A A^T``: the update is then one eigendecomposition of the d x d matrix
    ``rho Q L Q^T + (1 - rho) A A^T``, ``2 d^2 (n + r) + O(d^3)`` flops, with no n x n array
    and nothing cubic in n (about 3 ms at d = 145, n = 4096, r = 64 on the 2-core test
    machine, where it took 33-82 s through the n x n Gram matrix). The held eigenvectors
    then number ``min(d, r + n)``. See :func:`~lowrank_online.eigh_update`.

    The first update fixes the dimension, namespace, device and dtype of the tracker;
    later inputs must match them (no silent conversion). On Dask the held eigenvectors are
    chunked like the first batch, later batches are rechunked to them, and every update
    leaves the held factors computed on the workers and free of the graph that produced them:
    the task graph and the workers' memory stay flat over a stream. An input that is rejected, or an
    update whose decomposition fails (after the float64 retry), leaves the state as it
    was; a failure is reported with a ``RuntimeWarning``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import LowRankEMA
    >>> ema = LowRankEMA(rank=2, decay=0.5)
    >>> ema.update(xp.asarray([[1.0], [0.0], [0.0]]))
    >>> ema.update(xp.asarray([[0.0], [2.0], [0.0]]))
    >>> ema.eigenvalues            # 0.5 * 1 and 0.5 * 4
    Array([2. , 0.5], dtype=array_api_strict.float64)
    >>> ema.solve(xp.asarray([0.0, 1.0, 0.0]), damping=1.0)
    Array([0.        , 0.33333333, 0.        ], dtype=array_api_strict.float64)
    """

    def __init__(self, rank: int, decay: float = 0.95, *, reorthonormalize_every: int | None = 100) -> None:
        self.rank = _array.check_int(rank, "rank", minimum=1)
        self.decay = _array.check_real(decay, "decay", low=0.0, high=1.0, low_open=True)
        self.reorthonormalize_every = _array.check_int(
            reorthonormalize_every, "reorthonormalize_every", minimum=1, allow_none=True
        )
        self._state = EMAState(None, None, 0)

    # ---------------------------------------------------------------- accessors
    @property
    def eigenvalues(self) -> Any:
        return self._state.eigenvalues

    @property
    def eigenvectors(self) -> Any:
        return self._state.eigenvectors

    @property
    def n_updates(self) -> int:
        return self._state.n_updates

    def __repr__(self) -> str:
        held = "empty" if self.eigenvectors is None else f"d={self.eigenvectors.shape[0]}, held={self.eigenvectors.shape[1]}"
        return f"LowRankEMA(rank={self.rank}, decay={self.decay}, {held}, n_updates={self.n_updates})"

    # ---------------------------------------------------------------- validation
    def _check_operand_array(self, A: Any, name: str, *, finite: bool = True) -> tuple[Any, Any]:
        """Validate a tall operand against the held basis; return its namespace and the
        operand (on Dask, with its rows aligned to the held basis' chunks)."""
        Q = self.eigenvectors
        if Q is None:
            xp = _array.namespace((name, A))
            _array.check_array(A, name, xp, ndim=(1, 2), finite=finite)
            (A,) = _array.align_tall((name, A), xp=xp)
        else:
            xp = _array.namespace(("eigenvectors", Q), (name, A))
            _array.same_device(("eigenvectors", Q), (name, A))
            _array.check_array(A, name, xp, ndim=(1, 2), finite=finite)
            _, A = _array.align_tall(("eigenvectors", Q), (name, A), xp=xp)
            if A.dtype != Q.dtype:
                raise TypeError(f"`{name}` has dtype {A.dtype} but the tracker holds {Q.dtype}; cast it first")
            if A.shape[0] != Q.shape[0]:
                raise ValueError(f"`{name}` has {A.shape[0]} rows but the tracker has dimension {Q.shape[0]}")
        return xp, A

    def _require_state(self, what: str) -> None:
        if self.eigenvectors is None:
            raise ValueError(f"{what} needs a representation: call update() or refresh() first")

    def _commit(self, new: EMAState, xp: Any) -> None:
        every = self.reorthonormalize_every
        if every is not None and new.n_updates % every == 0 and new.n_updates != self.n_updates:
            L, Q = _restore_orthonormality(new.eigenvalues, new.eigenvectors, xp)
            new = EMAState(L, Q, new.n_updates)
        self._state = new

    # ---------------------------------------------------------------- operations
    def update(self, A: Any) -> None:
        """B-update with a batch ``A`` of shape (d, n) (or (d,)): Alg. 4 of paper 001."""
        xp, A = self._check_operand_array(A, "A", finite=False)
        A = A[:, None] if A.ndim == 1 else A
        held = 0 if self.eigenvectors is None else min(self.rank, self.eigenvectors.shape[1])
        # A wide batch is checked by the update itself, from its Gram matrix (see eigh_update).
        if not _dense_regime(A.shape[0], held, A.shape[1], xp):
            _array.check_finite(A, "A", xp)
        try:
            new = _b_update(self._state, A, self.rank, self.decay, xp)
        except _linalg.DecompositionError as err:
            warnings.warn(
                f"LowRankEMA.update skipped at update {self.n_updates + 1}: {err}; the previous "
                "representation is kept",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._commit(new, xp)

    def refresh(self, X: Any, seed: Any = None, *, oversample: int = 10, n_iter: int = 4) -> None:
        """Overwrite the representation with ``reigh(X, rank)`` (Alg. 5, B-R-KFAC).

        ``X`` is the true averaged matrix ``M_k`` (array or symmetric operator).
        """
        op = as_operand(X, "X")
        if self.eigenvectors is not None:
            xp = _array.namespace(("eigenvectors", self.eigenvectors), xp=op.xp)
            if op.shape != (self.eigenvectors.shape[0],) * 2:
                raise ValueError(f"`X` has shape {op.shape} but the tracker has dimension {self.eigenvectors.shape[0]}")
            if op.dtype != self.eigenvectors.dtype:
                raise TypeError(f"`X` has dtype {op.dtype} but the tracker holds {self.eigenvectors.dtype}")
            if op.device != _array.device(self.eigenvectors):
                raise ValueError(f"`X` is on device {op.device!r} but the tracker is on {_array.device(self.eigenvectors)!r}")
        try:
            res = reigh(X, min(self.rank, op.shape[0]), oversample=oversample, n_iter=n_iter, seed=seed)
        except _linalg.DecompositionError as err:
            warnings.warn(f"LowRankEMA.refresh skipped: {err}; the previous representation is kept", RuntimeWarning, stacklevel=2)
            return
        self._state = EMAState(res.eigenvalues, res.eigenvectors, self.n_updates)

    def correct(self, X: Any, n_modes: int, seed: Any = None) -> None:
        """Light subspace correction (Alg. 6, B-KFAC-C) on ``n_modes`` random held modes.

        The modes are drawn without replacement among the leading ``min(rank, m)`` held
        eigenvectors (the ones the next truncation keeps). ``X`` is the true averaged matrix
        (array or symmetric operator); cost: one product of X with ``n_modes`` columns.
        """
        self._require_state("correct()")
        op = as_operand(X, "X")
        Q = self.eigenvectors
        xp = _array.namespace(("eigenvectors", Q), xp=op.xp)
        if op.shape != (Q.shape[0],) * 2:
            raise ValueError(f"`X` has shape {op.shape} but the tracker has dimension {Q.shape[0]}")
        if op.dtype != Q.dtype:
            raise TypeError(f"`X` has dtype {op.dtype} but the tracker holds {Q.dtype}")
        pool = min(self.rank, Q.shape[1])
        n_modes = _array.check_int(n_modes, "n_modes", minimum=1, maximum=pool)
        idx = _array.choice(_array.as_generator(seed), pool, n_modes)
        try:
            new = _correct(self._state, op, idx, xp)
        except _linalg.DecompositionError as err:
            warnings.warn(f"LowRankEMA.correct skipped: {err}; the previous representation is kept", RuntimeWarning, stacklevel=2)
            return
        self._state = new

    def solve(self, X: Any, damping: float, continuation: bool = False) -> Any:
        """``(Q diag(L) Q^T + damping I)^{-1} X``; see :func:`~lowrank_online.damped_solve`."""
        self._require_state("solve()")
        xp, X = self._check_operand_array(X, "X")
        damping = _array.check_real(damping, "damping", low=0.0, low_open=True)
        return _damped_solve(self.eigenvalues, self.eigenvectors, X, damping, continuation, xp)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays (in the tracker's namespace) and numbers that rebuild it bit-exactly."""
        out: dict[str, Any] = {
            "rank": self.rank,
            "decay": self.decay,
            "n_updates": self.n_updates,
            "reorthonormalize_every": 0 if self.reorthonormalize_every is None else self.reorthonormalize_every,
        }
        if self.eigenvectors is not None:
            out["eigenvalues"] = self.eigenvalues
            out["eigenvectors"] = self.eigenvectors
        return out

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], *, xp: Any = None, device: Any = None, chunks: Any = None
    ) -> LowRankEMA:
        """Rebuild a tracker from :meth:`state_dict` (or from its NumPy copy loaded from npz).

        ``xp`` / ``device`` move the arrays to another namespace or device; by default they
        are used as they are. ``chunks`` (Dask ``xp`` only): the row chunks of the restored
        eigenvectors, an int or a tuple of ints, best those of the batches to come (default:
        Dask's automatic choice; batches are rechunked to the held basis either way).
        """
        missing = {"rank", "decay", "n_updates"} - set(state)
        if missing:
            raise ValueError(f"`state` lacks the entries {sorted(missing)}")
        every = int(state.get("reorthonormalize_every", 0))
        ema = cls(int(state["rank"]), float(state["decay"]), reorthonormalize_every=every or None)
        n_updates = _array.check_int(int(state["n_updates"]), "state['n_updates']", minimum=0)
        if "eigenvectors" in state:
            L, Q = state["eigenvalues"], state["eigenvectors"]
            if xp is not None:
                L = _array.from_host(L, xp, device)
                Q = _array.from_host(Q, xp, device, rows=chunks)
            ns = _array.namespace(("eigenvalues", L), ("eigenvectors", Q))
            _array.check_array(L, "state['eigenvalues']", ns, ndim=1)
            _array.check_array(Q, "state['eigenvectors']", ns, ndim=2)
            if Q.shape[1] != L.shape[0]:
                raise ValueError("`state['eigenvectors']` and `state['eigenvalues']` disagree on the rank")
            ema._state = EMAState(L, Q, n_updates)
        else:
            ema._state = EMAState(None, None, n_updates)
        return ema
