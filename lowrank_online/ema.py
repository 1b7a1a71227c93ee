"""Exponential-average tracking of ``sum kappa(i) rho^(k-i) A_i A_i^T`` as a low-rank EVD.

Paper 001: process (8)/(10) and Alg. 4 (B-update), Alg. 5 (RSVD overwrite, B-R-KFAC),
Alg. 6 (light subspace correction, B-KFAC-C). The arithmetic lives in pure functions over an
:class:`EMAState`; :class:`LowRankEMA` is a thin shell that validates input, calls them and
swaps in the new state only when they return.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_extra as xpx

from . import _array, _backend, _linalg, _validate
from ._results import EighResult
from .brand import _dense_regime, _eigh_update  # kernels: the tracker validates once, at its boundary
from .operators import as_operand
from .randomized import reigh
from .solve import _damped_solve  # the validated solve's kernel, for the same reason

__all__ = ["LowRankEMA"]

#: Format of :meth:`LowRankEMA.state_dict`. Format 1 (lowrank_online 0.1.0: no ``format``,
#: ``max_failures`` or ``skipped_updates`` entries) is read as well.
STATE_FORMAT = 2


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
    be = _backend.backend_of(Q, xp)
    cxp = be.cxp
    m = Q.shape[1]
    be.prefetch(L)
    G = be.to_core(Q.T @ Q)
    if m == 0 or float(cxp.max(cxp.abs(G - be.eye(m)))) <= 100 * be.eps:
        return EighResult(L, Q)
    mu, V = _linalg.small_eigh(G, cxp)
    root = cxp.sqrt(mu)
    half = (V * root[None, :]) @ V.T
    lam, U = _linalg.small_eigh(half @ xpx.create_diagonal(be.to_core(L), xp=cxp) @ half, cxp)
    Q_new, _ = _linalg.flip_signs(be.matmul(Q, be.from_core((V / root[None, :]) @ V.T @ U)), xp, be)
    return EighResult(be.from_core(cxp.clip(lam, min=0.0)), be.detach(Q_new))


def _reorthonormalized(new: EMAState, previous_updates: int, every: int | None, xp: Any) -> EMAState:
    """``new``, re-orthonormalised when its update count crossed a multiple of ``every``."""
    if every is not None and new.n_updates % every == 0 and new.n_updates != previous_updates:
        L, Q = _restore_orthonormality(new.eigenvalues, new.eigenvectors, xp)
        return EMAState(L, Q, new.n_updates)
    return new


def _astype_state(state: EMAState, dtype: Any, xp: Any) -> EMAState:
    if state.eigenvectors is None:
        return state
    return EMAState(_array.astype(state.eigenvalues, dtype, xp), _array.astype(state.eigenvectors, dtype, xp),
                    state.n_updates)


def _correct(state: EMAState, X: Any, idx: list[int], xp: Any) -> EMAState:
    """Light correction (Alg. 6): make the held representation agree with ``X`` on the span
    of the chosen eigenvectors, then re-sort the spectrum.

    ``X`` is an operand (array or operator) with ``matmat``.
    """
    L, Q = state.eigenvalues, state.eigenvectors
    be = _backend.backend_of(Q, xp)
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
    max_failures : int, optional
        Consecutive failed operations (see Notes) after which the tracker raises
        :class:`~lowrank_online.DecompositionError` instead of skipping, so that a stream that
        is broken for good does not go on silently. Default 10.

    Attributes
    ----------
    eigenvalues : array or None
        Held eigenvalues, descending (None before the first update).
    eigenvectors : array or None
        Held orthonormal eigenvectors, d x m.
    n_updates : int
        Number of B-updates applied.
    skipped_updates : int
        Operations (updates, refreshes, corrections) skipped because their computation failed.

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
    the task graph and the workers' memory stay flat over a stream.

    Reliability: an input that is refused (``ValueError`` / ``TypeError`` naming the
    argument) leaves the state as it was. :meth:`update`, :meth:`refresh` and :meth:`correct`
    share one protection path, which covers the periodic re-orthonormalisation too: the new
    state is computed aside, with NumPy's floating-point warnings silenced (overflow is
    detected on the result); it is committed only if the computation returned and the new
    spectrum and basis are finite. Otherwise a float32 tracker retries in float64 (where the
    device has it) and casts back when the result fits float32; if that fails too, the
    previous state is kept bit for bit, the skip is counted in :attr:`skipped_updates`, and the
    first skip of the tracker is reported by a ``RuntimeWarning``. After ``max_failures``
    consecutive failures the operation raises :class:`~lowrank_online.DecompositionError`
    (with the state still untouched); a success resets the count. A failure is a numerical
    one: a decomposition whose fallback chain (``eigh`` -> SVD, SVD -> QR + SVD, CholeskyQR ->
    Householder QR -> SVD) is exhausted, or a result that overflows, as a finite batch of
    magnitude 1e200 in float64 would make it.

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

    def __init__(
        self,
        rank: int,
        decay: float = 0.95,
        *,
        reorthonormalize_every: int | None = 100,
        max_failures: int = 10,
    ) -> None:
        self.rank = _validate.check_int(rank, "rank", minimum=1)
        self.decay = _validate.check_real(decay, "decay", low=0.0, high=1.0, low_open=True)
        self.reorthonormalize_every = _validate.check_int(
            reorthonormalize_every, "reorthonormalize_every", minimum=1, allow_none=True
        )
        self.max_failures = _validate.check_int(max_failures, "max_failures", minimum=1)
        self.skipped_updates = 0
        self._failures = 0  # consecutive
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
        held = (
            "empty"
            if self.eigenvectors is None
            else f"d={self.eigenvectors.shape[0]}, held={self.eigenvectors.shape[1]}"
        )
        return f"LowRankEMA(rank={self.rank}, decay={self.decay}, {held}, n_updates={self.n_updates})"

    # ---------------------------------------------------------------- validation
    def _check_operand_array(self, A: Any, name: str, *, finite: bool = True) -> tuple[Any, Any]:
        """Validate a tall operand against the held basis; return its namespace and the
        operand (on Dask, with its rows aligned to the held basis' chunks)."""
        Q = self.eigenvectors
        if Q is None:
            xp = _array.namespace((name, A))
            _validate.check_array(A, name, xp, ndim=(1, 2), finite=finite)
            if A.shape[0] == 0:
                # The first update fixes the dimension: d = 0 would lock the tracker for good.
                raise ValueError(f"`{name}` must have at least one row (the dimension d), got shape {tuple(A.shape)}")
            (A,) = _array.align_tall((name, A), xp=xp)
        else:
            xp = _array.namespace(("eigenvectors", Q), (name, A))
            _array.same_device(("eigenvectors", Q), (name, A))
            _validate.check_array(A, name, xp, ndim=(1, 2), finite=finite)
            _, A = _array.align_tall(("eigenvectors", Q), (name, A), xp=xp)
            if A.dtype != Q.dtype:
                raise TypeError(f"`{name}` has dtype {A.dtype} but the tracker holds {Q.dtype}; cast it first")
            if A.shape[0] != Q.shape[0]:
                raise ValueError(f"`{name}` has {A.shape[0]} rows but the tracker has dimension {Q.shape[0]}")
        return xp, A

    def _require_state(self, what: str) -> None:
        if self.eigenvectors is None:
            raise ValueError(f"{what} needs a representation: call update() or refresh() first")

    def _check_square_operand(self, X: Any) -> tuple[Any, Any]:
        """``X`` (array or operator) against the held basis: ``(operand, namespace)``."""
        op = as_operand(X, "X")
        Q = self.eigenvectors
        if Q is None:
            return op, op.xp
        if op.is_array:
            xp = _array.namespace(("eigenvectors", Q), ("X", op.array))
        elif _array.namespace(("eigenvectors", Q)) is not op.xp:
            raise TypeError(f"operator `X` works in {_array._namespace_name(op.xp)} but the tracker holds "
                            f"{_array._namespace_name(_array.namespace(('eigenvectors', Q)))} arrays")
        else:
            xp = op.xp
        if op.shape != (Q.shape[0],) * 2:
            raise ValueError(f"`X` has shape {op.shape} but the tracker has dimension {Q.shape[0]}")
        if op.dtype != Q.dtype:
            raise TypeError(f"`X` has dtype {op.dtype} but the tracker holds {Q.dtype}")
        if op.device != _array.device(Q):
            raise ValueError(f"`X` is on device {op.device!r} but the tracker is on {_array.device(Q)!r}")
        return op, xp

    # ---------------------------------------------------------------- the protection path
    def _protected(self, what: str, compute: Callable[..., EMAState], xp: Any, *arrays: Any) -> None:
        """Run ``compute(state, *arrays) -> new state`` and commit it, or count a failure.

        The one path of :meth:`update`, :meth:`refresh` and :meth:`correct` (see the class
        Notes). ``arrays`` are the operation's array inputs (an operator is not passed:
        ``compute`` closes over it); they are upcast with the state for the float64 retry,
        which is not made without them.
        """
        new, reason = self._attempt(compute, self._state, arrays, xp)
        dtype = None if self.eigenvectors is None else self.eigenvectors.dtype
        if dtype is None:
            dtype = next((a.dtype for a in arrays if a is not None), None)
        if (
            new is None
            and dtype is not None
            and _array.is_float32(xp, dtype)
            and arrays
            and _array.core_dtype(xp, _array.device(arrays[0])) == xp.float64
        ):
            up = [_array.astype(a, xp.float64, xp) for a in arrays]
            new64, reason64 = self._attempt(compute, _astype_state(self._state, xp.float64, xp), up, xp)
            if new64 is None:
                reason = f"{reason}; in float64: {reason64}"
            else:
                with _array.quiet_floating_point():
                    new = _astype_state(new64, xp.float32, xp)
                if not self._finite(new, xp):
                    new, reason = None, f"{reason}; in float64 the result does not fit float32"
        if new is None:
            self._failed(what, reason)
            return
        self._failures = 0
        self._state = new

    def _attempt(self, compute: Callable[..., EMAState], state: EMAState, arrays: Any, xp: Any) -> tuple[Any, str]:
        try:
            with _array.quiet_floating_point():  # overflow is detected on the result
                new = compute(state, *arrays)
        except _linalg.NUMERICAL_FAILURES as err:
            return None, str(err) or type(err).__name__
        if not self._finite(new, xp):
            return None, "the new representation holds NaN or infinity (input too large for the dtype?)"
        return new, ""

    @staticmethod
    def _finite(state: EMAState, xp: Any) -> bool:
        # On a lazy namespace the small cores were checked inside the computation: a pass
        # over the distributed basis would cost as much as the update.
        if state.eigenvectors is None or _array.is_lazy(xp):
            return True
        # In memory the basis is checked too: 1-2% of an update at d = 10,000, r + n = 96.
        return _backend.backend_of(state.eigenvectors, xp).all_finite(state.eigenvalues, state.eigenvectors)

    def _failed(self, what: str, reason: str) -> None:
        self._failures += 1
        self.skipped_updates += 1
        if self._failures >= self.max_failures:
            raise _linalg.DecompositionError(
                f"LowRankEMA: {self._failures} consecutive operations failed (max_failures={self.max_failures}); "
                f"the last ({what}): {reason}"
            )
        if self.skipped_updates == 1:
            warnings.warn(
                f"LowRankEMA.{what}: {reason}; the previous representation is kept (skips are counted "
                "in `skipped_updates`; this warning is shown once per tracker)",
                RuntimeWarning,
                stacklevel=4,  # the caller of update / refresh / correct
            )

    # ---------------------------------------------------------------- operations
    def update(self, A: Any) -> None:
        """B-update with a batch ``A`` of shape (d, n) (or (d,)): Alg. 4 of paper 001."""
        _validate.check_detached(A, "A")
        xp, A = self._check_operand_array(A, "A", finite=False)
        A = A[:, None] if A.ndim == 1 else A
        held = 0 if self.eigenvectors is None else min(self.rank, self.eigenvectors.shape[1])
        # A wide batch is checked by the update itself, from its Gram matrix (see eigh_update):
        # its ValueError naming `A` is a refusal, not a failure.
        if not _dense_regime(A.shape[0], held, A.shape[1], xp):
            _validate.check_finite(A, "A", xp)
        previous = self.n_updates
        rank, decay, every = self.rank, self.decay, self.reorthonormalize_every

        def compute(state: EMAState, A: Any) -> EMAState:
            return _reorthonormalized(_b_update(state, A, rank, decay, xp), previous, every, xp)

        self._protected(f"update skipped at update {previous + 1}", compute, xp, A)

    def refresh(self, X: Any, seed: Any = None, *, oversample: int = 10, n_iter: int = 4) -> None:
        """Overwrite the representation with ``reigh(X, rank)`` (Alg. 5, B-R-KFAC).

        ``X`` is the true averaged matrix ``M_k`` (array or symmetric operator). A refresh that
        fails keeps the previous representation (see the class Notes); one of an empty tracker
        leaves it empty.
        """
        op, xp = self._check_square_operand(X)
        oversample = _validate.check_int(oversample, "oversample", minimum=0)
        n_iter = _validate.check_int(n_iter, "n_iter", minimum=0)
        rng = _array.as_generator(seed)
        # The generator's position is part of the computation: a float64 retry starts from it.
        start = rng.bit_generator.state
        k = min(self.rank, op.shape[0])

        def compute(state: EMAState, X: Any = None) -> EMAState:
            rng.bit_generator.state = start
            res = reigh(op.op if X is None else X, k, oversample=oversample, n_iter=n_iter, seed=rng,
                        xp=None if X is not None else op.xp)
            return EMAState(res.eigenvalues, res.eigenvectors, state.n_updates)

        self._protected("refresh skipped", compute, xp, *((op.array,) if op.is_array else ()))

    def correct(self, X: Any, n_modes: int, seed: Any = None) -> None:
        """Light subspace correction (Alg. 6, B-KFAC-C) on ``n_modes`` random held modes.

        The modes are drawn without replacement among the leading ``min(rank, m)`` held
        eigenvectors (the ones the next truncation keeps). ``X`` is the true averaged matrix
        (array or symmetric operator); cost: one product of X with ``n_modes`` columns. An
        array X is checked for symmetry (one blocked read, as :func:`~lowrank_online.reigh`
        does without a sketch); for an operator, the restriction ``Q_c^T X Q_c`` to the
        corrected modes is (free), which is all of X the correction uses.
        """
        self._require_state("correct()")
        op, xp = self._check_square_operand(X)
        Q = self.eigenvectors
        pool = min(self.rank, Q.shape[1])
        if pool == 0:
            raise ValueError("correct() needs a representation with at least one eigenpair; the tracker holds none")
        n_modes = _validate.check_int(n_modes, "n_modes", minimum=1, maximum=pool)
        idx = _array.choice(_array.as_generator(seed), pool, n_modes)
        if op.is_array:
            _validate.check_symmetric(op.array, "X", xp)

        def compute(state: EMAState, X: Any = None) -> EMAState:
            operand = op if X is None else as_operand(X, "X", check_finite=False)
            return _correct(state, _SymmetryChecked(operand, xp), idx, xp)

        self._protected("correct skipped", compute, xp, *((op.array,) if op.is_array else ()))

    def solve(self, X: Any, damping: float, continuation: bool = False) -> Any:
        """``(Q diag(L) Q^T + damping I)^{-1} X``; see :func:`~lowrank_online.damped_solve`."""
        self._require_state("solve()")
        xp, X = self._check_operand_array(X, "X")
        damping = _validate.check_real(damping, "damping", low=0.0, low_open=True)
        continuation = _validate.check_bool(continuation, "continuation")
        return _damped_solve(self.eigenvalues, self.eigenvectors, X, damping, continuation, xp)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays (in the tracker's namespace) and numbers that rebuild it bit-exactly
        (format 2, see :meth:`from_state_dict`)."""
        out: dict[str, Any] = {
            "format": STATE_FORMAT,
            "rank": self.rank,
            "decay": self.decay,
            "n_updates": self.n_updates,
            "reorthonormalize_every": 0 if self.reorthonormalize_every is None else self.reorthonormalize_every,
            "max_failures": self.max_failures,
            "skipped_updates": self.skipped_updates,
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

        Every entry is validated and a bad one is refused with a ``ValueError`` naming it
        (``TypeError`` when ``state`` is not a dict): unknown or missing keys, a format other
        than 1 or 2, integers that are not integers or out of range (``rank >= 1``,
        ``n_updates >= 0``...), ``decay`` outside (0, 1], eigenvalues and eigenvectors given
        apart, arrays that are not floating, finite, of one dtype and of shapes ``(m,)`` and
        ``(d, m)`` with ``m <= d``, eigenvalues that are negative (beyond rounding) or not
        descending, and eigenvectors that are not orthonormal to ``sqrt(eps)``.
        """
        return _restore(cls, state, xp, device, chunks)


class _SymmetryChecked:
    """An operand whose products with the corrected modes are tested for symmetry.

    ``C = Q_c^T X Q_c`` is the only part of X the correction reads; an operator whose ``C``
    is not symmetric to ``sqrt(eps)`` (``|C - C^T|_F > sqrt(eps) |C|_F``) is refused with a
    ``ValueError`` naming ``X``, before the correction is committed.
    """

    def __init__(self, op: Any, xp: Any) -> None:
        self._op, self._xp = op, xp

    def matmat(self, V: Any) -> Any:
        Y = self._op.matmat(V)
        if V.shape[1] >= 2 and not self._op.is_array:
            C = V.T @ Y
            gap, scale = _array.to_floats(
                self._xp, self._xp.linalg.matrix_norm(C - C.T), self._xp.linalg.matrix_norm(C)
            )
            if gap > _array.eps(self._xp, V.dtype) ** 0.5 * scale:
                raise ValueError(
                    f"`X` must be symmetric; on the corrected modes |C - C^T|_F / |C|_F = {gap / scale:.3g} "
                    "(C = Q_c^T X Q_c) exceeds sqrt(eps)"
                )
        return Y


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
_KEYS = {"format", "rank", "decay", "n_updates", "reorthonormalize_every", "max_failures", "skipped_updates",
         "eigenvalues", "eigenvectors"}


def _restore(cls: type, state: Any, xp: Any, device: Any, chunks: Any) -> LowRankEMA:
    if not isinstance(state, dict):
        raise TypeError(f"`state` must be a dict (from state_dict or load_state), got {type(state).__name__}")
    unknown = set(state) - _KEYS
    if unknown:
        raise ValueError(f"`state` has unknown entries {sorted(unknown)}; expected those of LowRankEMA.state_dict")
    fmt = _entry_int(state, "format", 1, default=1)
    if fmt not in (1, STATE_FORMAT):
        raise ValueError(f"`state['format']` is {fmt}; this version reads formats 1 and {STATE_FORMAT}")
    missing = {"rank", "decay", "n_updates"} - set(state)
    if missing:
        raise ValueError(f"`state` lacks the entries {sorted(missing)}")
    if ("eigenvalues" in state) != ("eigenvectors" in state):
        given, lacking = ("eigenvalues", "eigenvectors") if "eigenvalues" in state else ("eigenvectors", "eigenvalues")
        raise ValueError(f"`state` has {given!r} but not {lacking!r}; they are saved together")
    rank = _entry_int(state, "rank", 1)
    decay = state["decay"]
    if isinstance(decay, bool) or not isinstance(_scalar(decay), numbers.Real):
        raise ValueError(f"`state['decay']` must be a real number, got {decay!r}")
    decay = float(_scalar(decay))
    if not (math.isfinite(decay) and 0.0 < decay <= 1.0):
        raise ValueError(f"`state['decay']` must lie in (0, 1], got {decay}")
    every = _entry_int(state, "reorthonormalize_every", 0, default=0)
    ema = cls(rank, decay, reorthonormalize_every=every or None,
              max_failures=_entry_int(state, "max_failures", 1, default=10))
    n_updates = _entry_int(state, "n_updates", 0)
    ema.skipped_updates = _entry_int(state, "skipped_updates", 0, default=0)
    if "eigenvectors" not in state:
        ema._state = EMAState(None, None, n_updates)
        return ema
    L, Q = state["eigenvalues"], state["eigenvectors"]
    for key, value in (("eigenvalues", L), ("eigenvectors", Q)):
        if not _array.is_array(value):
            raise ValueError(f"`state[{key!r}]` must be an array, got {type(value).__name__}")
    if xp is not None:
        L = _array.from_host(_array.to_numpy(L), xp, device)
        Q = _array.from_host(_array.to_numpy(Q), xp, device, rows=chunks)
    try:
        ns = _array.namespace(("state['eigenvalues']", L), ("state['eigenvectors']", Q))
        _array.same_device(("state['eigenvalues']", L), ("state['eigenvectors']", Q))
        _validate.check_array(L, "state['eigenvalues']", ns, ndim=1)
        _validate.check_array(Q, "state['eigenvectors']", ns, ndim=2)
    except TypeError as err:  # a checkpoint's content is a value, not an argument type
        raise ValueError(str(err)) from err
    if L.dtype != Q.dtype:
        raise ValueError(f"`state['eigenvalues']` has dtype {_array.dtype_name(L.dtype)} but `state['eigenvectors']` "
                         f"has {_array.dtype_name(Q.dtype)}; a tracker holds one dtype")
    d, m = Q.shape
    if L.shape[0] != m or m > d:
        raise ValueError(f"`state['eigenvectors']` has shape {(d, m)} and `state['eigenvalues']` {tuple(L.shape)}; "
                         "they must be (d, m) and (m,) with m <= d")
    if m:
        be = _backend.backend_of(Q, ns)
        top, low, rise = _array.to_floats(
            ns, ns.max(ns.abs(L)), ns.min(L), ns.max(L[1:] - L[:-1]) if m > 1 else ns.min(L) * 0
        )
        if low < -1e3 * be.eps * top:
            raise ValueError(
                f"`state['eigenvalues']` must be non-negative (a PSD representation), got minimum {low:.3g}"
            )
        if rise > 0.0:
            raise ValueError("`state['eigenvalues']` must be sorted in descending order")
        G = be.to_core(Q.T @ Q)
        gap = _array.to_floats(be.cxp, be.cxp.max(be.cxp.abs(G - be.eye(m))))[0]
        if not gap <= be.eps**0.5:
            raise ValueError(
                f"`state['eigenvectors']` must be orthonormal; max |Q^T Q - I| = {gap:.3g} exceeds sqrt(eps)"
            )
    ema._state = EMAState(L, Q, n_updates)
    return ema


def _scalar(value: Any) -> Any:
    """A 0-d array (what a loader may hand back) as a Python number; anything else as is."""
    if _array.is_array(value) and getattr(value, "ndim", None) == 0:
        return _array.to_numpy(value).item()
    return value


def _entry_int(state: dict[str, Any], key: str, minimum: int, *, default: int | None = None) -> int:
    if key not in state and default is not None:
        return default
    value = _scalar(state[key])
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`state[{key!r}]` must be an integer >= {minimum}, got {value!r}")
    return int(value)
