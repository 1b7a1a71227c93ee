"""Single-pass Nystrom sketch of a stream of Gram matrices (Tropp, Yurtsever, Udell, Cevher 2017).

The matrix ``M = sum_i w_i A_i A_i^T`` (or its exponential average, with the convention of
:class:`~lowrank_online.LowRankEMA`) is never formed: the sketch holds ``Y = M Omega`` for a
fixed orthonormal test matrix ``Omega`` (d x k), which is linear in M, so every update is
``Y <- rho Y + w A (A^T Omega)``. The eigendecomposition is extracted from ``(Omega, Y)`` at any
time, without another look at the data. The arithmetic lives in pure functions over a
:class:`SketchState`; :class:`NystromSketch` is the shell that validates input and swaps in the
new state only when they return.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _array, _backend, _linalg, _validate
from ._results import EighResult

__all__ = ["NystromSketch"]


class SketchState(NamedTuple):
    """Plain arrays and numbers: the test matrix, the sketch and the count of updates."""

    omega: Any  # (d, k) orthonormal, or None before the first update
    sketch: Any  # (d, k) = M @ omega, or None
    n_updates: int


def _first_omega(d: int, k: int, A: Any, xp: Any, seed: Any) -> Any:
    """Orthonormal Gaussian test matrix with A's rows, dtype and device (a Haar-random basis:
    the Gaussian theory holds, and the core ``Omega^T Y`` is as well conditioned as M allows)."""
    be = _backend.backend_of(A, xp)
    G = be.normal(_array.as_generator(seed), (d, k))
    return be.detach(_linalg.orthonormalize(G, be, passes=2))


def sketch_update(state: SketchState, A: Any, decay: float | None, seed: Any, k: int, xp: Any) -> SketchState:
    """``Y <- rho Y + (1 - rho) A A^T Omega`` (``Y <- Y + A A^T Omega`` without decay); the first
    update sets ``Y = A A^T Omega`` unscaled, as ``M_0 = A_0 A_0^T``. Cost ``4 d n k`` flops."""
    be = _backend.backend_of(A, xp)
    omega = state.omega if state.omega is not None else _first_omega(A.shape[0], k, A, xp, seed)
    C = be.to_core(A.T @ omega)  # n x k: the only pass over A besides the product below
    if not _linalg._finite(be.cxp, C):
        raise ValueError("`A` contains NaN or infinity")
    first = state.sketch is None
    weight = 1.0 if first or decay is None else 1.0 - decay
    AC = be.matmul(A, be.from_core(weight * C))
    if first:
        Y = AC
    elif decay is None:
        Y = state.sketch + AC
    else:
        Y = decay * state.sketch + AC
    return SketchState(omega, be.detach(Y), state.n_updates + 1)


def nystrom_from_sketch(omega: Any, Y: Any, rank: int, be: _backend.Backend, rng: Any) -> EighResult:
    """Rank-``rank`` eigenpairs of ``Y (Omega^T Y)^+ Y^T`` (Tropp et al. 2017, Alg. 3).

    The shift ``nu = sqrt(d) eps |Y|_F`` makes the core ``Omega^T (Y + nu Omega)`` positive
    definite to working precision; ``F = (Y + nu Omega) V beta^{-1/2}`` factors the shifted
    approximation as ``F F^T``, whose SVD gives the eigenvectors, and ``nu`` is removed from the
    eigenvalues. Directions the sketch does not see (M of rank below ``rank``) get zero
    eigenvalues and an orthonormal completion.
    """
    from .randomized import _finish_nystrom  # the completion and sign convention of reigh

    xp, cxp = be.xp, be.cxp
    d = omega.shape[0]
    Y = be.persist(Y)
    (norm,) = _array.to_floats(xp, xp.linalg.vector_norm(Y))
    nu = math.sqrt(d) * be.eps * norm
    Y = be.persist(Y + nu * omega) if nu > 0.0 else Y
    beta, V = _linalg.small_eigh(be.to_core(omega.T @ Y), cxp)
    keep = be.count(beta > 0.0)
    if keep == 0:  # M = 0 on the sketch
        return _finish_nystrom(be.zeros((0,)), Y[:, :0], rank, rng, be)
    F = be.matmul(Y, be.from_core(V[:, :keep] / cxp.sqrt(beta[:keep])[None, :]))
    U, s, _ = _linalg.tall_svd(F, be)
    keep = min(rank, s.shape[0])
    return _finish_nystrom(cxp.clip(s[:keep] * s[:keep] - nu, min=0.0), U[:, :keep], rank, rng, be)


class NystromSketch:
    r"""Single-pass, fixed-rank eigendecomposition of a stream of Gram matrices.

    Holds ``Y = M Omega`` for the matrix

    .. math:: M = \sum_i A_i A_i^T \quad\text{(no decay)}, \qquad
              M_0 = A_0 A_0^T,\; M_k = \rho M_{k-1} + (1 - \rho) A_k A_k^T \quad\text{(decay } \rho\text{)},

    the latter being :class:`~lowrank_online.LowRankEMA`'s convention, and extracts its top
    ``rank`` eigenpairs on demand with the stabilised Nystrom approximation of Tropp,
    Yurtsever, Udell and Cevher (2017), Alg. 3. Nothing else about M is kept: memory
    ``2 d k`` entries, an update costs ``4 d n k`` flops for an ``n``-column batch, and
    :meth:`eigh` costs ``O(d k^2)``; the data are read once.

    Parameters
    ----------
    d : int
        Dimension of M.
    rank : int
        Eigenpairs returned by :meth:`eigh`, ``1 <= rank <= sketch_size``.
    sketch_size : int, optional
        Columns ``k`` of the test matrix, ``rank <= k <= d``. Default ``min(d, 2 rank + 1)``:
        the expected error is within ``1 + rank / (k - rank - 1)`` of the best rank-``rank``
        error in the Frobenius norm (Tropp et al. 2017, Thm. 4.1), a factor 2 there, and
        ``k = rank`` gives no such bound.
    decay : float, optional
        ``rho`` in (0, 1]; default None (a plain sum).
    seed : None, int or numpy.random.Generator, optional
        Seed of the test matrix (drawn on the host with NumPy at the first update, in the
        batch's namespace, device and dtype: one seed gives the same sketch on every backend).

    Attributes
    ----------
    n_updates : int
        Batches absorbed.

    Notes
    -----
    Unlike :func:`~lowrank_online.reigh`, which may multiply by M as often as it needs, a
    sketch sees every batch once and cannot iterate: its accuracy is that of one pass
    (no power iteration), which is enough when the spectrum of M decays well beyond
    ``rank`` (exact when M has rank at most ``k``) and crude when it does not. Use
    :class:`~lowrank_online.LowRankEMA` when the eigenvectors are needed after every update,
    and this sketch when the stream is long, the batches are cheap to multiply and the
    decomposition is needed rarely. The first update fixes the dimension, namespace, device
    and dtype; an input that is rejected leaves the state as it was.

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Fixed-rank approximation of a
       positive-semidefinite matrix from streaming data", NeurIPS 2017, Alg. 3, Thm. 4.1.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import NystromSketch
    >>> sk = NystromSketch(4, rank=2, seed=0)
    >>> sk.update(xp.asarray([[2.0], [0.0], [0.0], [0.0]]))
    >>> sk.update(xp.asarray([[0.0], [1.0], [0.0], [0.0]]))
    >>> [round(float(v), 10) for v in sk.eigh().eigenvalues]
    [4.0, 1.0]
    """

    def __init__(self, d: int, rank: int, *, sketch_size: int | None = None, decay: float | None = None,
                 seed: Any = None) -> None:
        self.d = _validate.check_int(d, "d", minimum=1)
        self.rank = _validate.check_int(rank, "rank", minimum=1, maximum=self.d)
        if sketch_size is None:
            sketch_size = min(self.d, 2 * self.rank + 1)
        self.sketch_size = _validate.check_int(sketch_size, "sketch_size", minimum=self.rank, maximum=self.d)
        self.decay = None if decay is None else _validate.check_real(decay, "decay", low=0.0, high=1.0, low_open=True)
        self._rng = _array.as_generator(seed)  # validated now, used at the first update
        self._state = SketchState(None, None, 0)

    @property
    def n_updates(self) -> int:
        return self._state.n_updates

    def __repr__(self) -> str:
        return (f"NystromSketch(d={self.d}, rank={self.rank}, sketch_size={self.sketch_size}, decay={self.decay}, "
                f"n_updates={self.n_updates})")

    def update(self, A: Any) -> None:
        """Absorb a batch ``A`` of shape (d, n) (or (d,)): ``M <- rho M + (1 - rho) A A^T``
        (``M <- M + A A^T`` without decay; the first batch enters unscaled)."""
        omega = self._state.omega
        if omega is None:
            xp = _array.namespace(("A", A))
            _validate.check_array(A, "A", xp, ndim=(1, 2), finite=True)
        else:
            xp = _array.namespace(("sketch", omega), ("A", A))
            _array.same_device(("sketch", omega), ("A", A))
            _validate.check_array(A, "A", xp, ndim=(1, 2), finite=True)
            if A.dtype != omega.dtype:
                raise TypeError(f"`A` has dtype {A.dtype} but the sketch holds {omega.dtype}; cast it first")
        if A.shape[0] != self.d:
            raise ValueError(f"`A` has {A.shape[0]} rows but the sketch has dimension {self.d}")
        if omega is None:
            (A,) = _array.align_tall(("A", A), xp=xp)
        else:
            _, A = _array.align_tall(("sketch", omega), ("A", A), xp=xp)
        A = A[:, None] if A.ndim == 1 else A
        self._state = sketch_update(self._state, A, self.decay, self._rng, self.sketch_size, xp)

    def eigh(self, rank: int | None = None) -> EighResult:
        """Top ``rank`` (default: the sketch's) eigenpairs of the sketched M, descending, with
        the library's sign convention; a pure read of the state."""
        if self._state.sketch is None:
            raise ValueError("eigh() needs a sketch: call update() first")
        rank = self.rank if rank is None else _validate.check_int(rank, "rank", minimum=1, maximum=self.sketch_size)
        omega, Y = self._state.omega, self._state.sketch
        xp = _array.namespace(("sketch", Y))
        be = _backend.backend_of(Y, xp)
        # The completion of unseen directions draws from a generator of its own, so eigh()
        # gives the same result however often it is called.
        return nystrom_from_sketch(omega, Y, rank, be, _array.as_generator(self.n_updates))

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays (in the sketch's namespace) and numbers that rebuild it bit-exactly."""
        out: dict[str, Any] = {"d": self.d, "rank": self.rank, "sketch_size": self.sketch_size,
                               "decay": 0.0 if self.decay is None else self.decay, "n_updates": self.n_updates}
        if self._state.sketch is not None:
            out["omega"], out["sketch"] = self._state.omega, self._state.sketch
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, xp: Any = None, device: Any = None) -> NystromSketch:
        """Rebuild a sketch from :meth:`state_dict` (or its NumPy copy); ``xp`` / ``device``
        move the arrays to another namespace or device."""
        missing = {"d", "rank", "sketch_size", "decay", "n_updates"} - set(state)
        if missing:
            raise ValueError(f"`state` lacks the entries {sorted(missing)}")
        decay = float(state["decay"])
        sk = cls(int(state["d"]), int(state["rank"]), sketch_size=int(state["sketch_size"]),
                 decay=decay if decay > 0.0 else None)
        n = _validate.check_int(int(state["n_updates"]), "state['n_updates']", minimum=0)
        if "sketch" in state:
            omega, Y = state["omega"], state["sketch"]
            if xp is not None:
                omega, Y = _array.from_host(omega, xp, device), _array.from_host(Y, xp, device)
            ns = _array.namespace(("omega", omega), ("sketch", Y))
            for name, arr in (("omega", omega), ("sketch", Y)):
                _validate.check_array(arr, f"state['{name}']", ns, ndim=2)
                if tuple(arr.shape) != (sk.d, sk.sketch_size):
                    raise ValueError(
                        f"`state['{name}']` has shape {tuple(arr.shape)}, expected {(sk.d, sk.sketch_size)}"
                    )
            sk._state = SketchState(omega, Y, n)
        else:
            sk._state = SketchState(None, None, n)
        return sk
