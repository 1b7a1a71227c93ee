"""The Fisher block of a fully-connected layer as a matrix-free operator on ``R(F)``.

Paper 002 (Koroko et al.), Prop. 3.1 (products with the rearranged block from per-sample
statistics) and Sec. 3.2.1 (products after subtracting known Kronecker terms), in the
row-major convention of ``docs/conventions.rst``.
"""

from __future__ import annotations

from typing import Any

from .. import _array, _validate
from . import _checks
from .kronsum import KronSum

__all__ = ["FisherBlockOperator"]

# Rows of the N x N Gram matrices handled at once by `frobenius_norm` (bounds its memory).
_GRAM_CHUNK = 1024


class FisherBlockOperator:
    r"""``R(F)`` for the Fisher block ``F = (1/N) sum_t (g_t g_t^T) ⊗ (a_t a_t^T)``, matrix-free.

    Parameters
    ----------
    a : array, shape (N, d_a)
        Per-sample layer inputs (activations), one row per sample; append the bias column
        (ones) yourself when the layer has a bias.
    g : array, shape (N, d_g)
        Per-sample gradients of the loss with respect to the layer's pre-activations.
    subtract : KronSum, optional
        Known terms ``sum_i L_i ⊗ R_i`` (``L_i`` of shape ``d_g x d_g``, ``R_i`` of shape
        ``d_a x d_a``) to subtract: the operator is then ``R(F - sum_i L_i ⊗ R_i)``
        (paper 002, Sec. 3.2.1 and 3.3).
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.
    xp : namespace, optional
        The arrays' namespace (inferred by default).

    Attributes
    ----------
    shape : (int, int)
        ``(d_g^2, d_a^2)``, the shape of ``R(F)``.
    dtype
        The promoted floating dtype of ``a`` and ``g``.
    device
        The arrays' device.
    n_samples, dim_a, dim_g : int
        ``N``, ``d_a`` and ``d_g``.

    Notes
    -----
    **Convention.** A weight ``W`` of shape ``d_g x d_a`` (outputs x inputs) flattened
    row-major has per-sample gradient ``vec(g a^T) = g ⊗ a``, so its Fisher block is
    ``F = E[(g g^T) ⊗ (a a^T)]``; K-FAC is ``E[g g^T] ⊗ E[a a^T]``. The papers' column-major
    ``vec`` gives ``a ⊗ g`` and ``E[a a^T ⊗ g g^T]`` instead: the same matrix with its rows
    and columns permuted, and the two factors exchanged.

    **Products** (paper 002, Prop. 3.1, row-major form). For ``v = vec(V)`` with ``V`` of
    shape ``d_a x d_a`` and ``u = vec(U)`` with ``U`` of shape ``d_g x d_g``,

    .. math:: R(F)\,v = \tfrac1N \sum_t (a_t^T V a_t)\,\mathrm{vec}(g_t g_t^T), \qquad
              R(F)^T u = \tfrac1N \sum_t (g_t^T U g_t)\,\mathrm{vec}(a_t a_t^T).

    A block of ``k`` vectors costs two GEMMs: ``c = rowsum(a ∘ (a V))`` (``2 N d_a^2 k``
    flops) and ``g^T diag(c) g`` (``2 N d_g^2 k`` flops), so a product costs
    ``O(N (d_a^2 + d_g^2) k)`` time and ``O(N (d_a + d_g) k + (d_a^2 + d_g^2) k)`` memory.
    Neither F (``d_a^2 d_g^2`` entries) nor R(F) is formed. Subtracted terms add
    ``vec(L_i) vec(R_i)^T`` products, ``O((d_a^2 + d_g^2) k)`` each. The products run on
    copies of ``a`` and ``g`` normalised by powers of two (exact), the scale applied to the
    result, so a product over- or underflows only when ``R(F) V`` itself does. The operator satisfies
    :mod:`lowrank_online.operators`, so :func:`~lowrank_online.rsvd`,
    :func:`~lowrank_online.power_svd` and :func:`~lowrank_online.lanczos_svd` accept it.

    References
    ----------
    .. [1] A. Koroko et al., ESAIM Proc. (2023), Prop. 3.1 and Sec. 3.2.1.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import FisherBlockOperator
    >>> a = xp.asarray([[2.0, 0.0], [1.0, 2.0], [0.0, 1.0]])
    >>> g = xp.asarray([[1.0], [1.0], [3.0]])
    >>> op = FisherBlockOperator(a, g)
    >>> op.shape
    (1, 4)
    >>> op.matmat(xp.reshape(xp.eye(2), (4, 1)))  # mean of |a_t|^2 |g_t|^2 = tr F
    Array([[6.]], dtype=array_api_strict.float64)
    """

    def __init__(
        self,
        a: Any,
        g: Any,
        *,
        subtract: KronSum | None = None,
        check_finite: bool = True,
        xp: Any = None,
    ) -> None:
        check_finite = _validate.check_bool(check_finite, "check_finite")
        xp, a, g = _validate.check_statistics(a, g, check_finite=check_finite, xp=xp)
        self._xp = xp
        self.a, self.g = a, g
        self.n_samples, self.dim_a = (int(s) for s in a.shape)
        self.dim_g = int(g.shape[1])
        self.dtype = a.dtype
        self.device = _array.device(a)
        self.shape = (self.dim_g**2, self.dim_a**2)
        self.subtracted: KronSum | None = None
        self._sub_left = self._sub_right = None
        # The products are fourth powers of the statistics (a^T V a times g g^T): they run on
        # copies normalised by powers of two, and 2^(2 (e_a + e_g)) is applied to the result,
        # so they over- or underflow only when R(F) V itself does.
        (self._a_unit, ea), (self._g_unit, eg) = _checks.normalized(a, "a", xp), _checks.normalized(g, "g", xp)
        self._scale_exponent = 2 * (ea + eg)
        if subtract is not None:
            self._set_subtracted(subtract, check_finite)

    # ----------------------------------------------------------------------------------------
    def _set_subtracted(self, terms: Any, check_finite: bool) -> None:
        xp = self._xp
        if not isinstance(terms, KronSum):
            raise TypeError(f"`subtract` must be a KronSum, got {type(terms).__name__}")
        if terms.n_terms == 0 or len(terms.left) != len(terms.right):
            raise ValueError("`subtract` must hold at least one (left, right) pair")
        cols_l, cols_r = [], []
        for i, (L, R) in enumerate(zip(terms.left, terms.right, strict=True)):
            _array.namespace((f"subtract.left[{i}]", L), ("a", self.a))
            _array.namespace((f"subtract.right[{i}]", R), ("a", self.a))
            _array.same_device((f"subtract.left[{i}]", L), ("a", self.a))
            _array.same_device((f"subtract.right[{i}]", R), ("a", self.a))
            _checks.square(L, f"subtract.left[{i}]", xp, check_finite=check_finite, size=self.dim_g)
            _checks.square(R, f"subtract.right[{i}]", xp, check_finite=check_finite, size=self.dim_a)
            cols_l.append(xp.reshape(_array.astype(L, self.dtype, xp), (-1,)))
            cols_r.append(xp.reshape(_array.astype(R, self.dtype, xp), (-1,)))
        self.subtracted = KronSum(
            tuple(_array.astype(L, self.dtype, xp) for L in terms.left),
            tuple(_array.astype(R, self.dtype, xp) for R in terms.right),
        )
        self._sub_left = xp.stack(cols_l, axis=1)
        self._sub_right = xp.stack(cols_r, axis=1)

    def __array_namespace__(self, api_version: str | None = None) -> Any:
        return self._xp

    def __repr__(self) -> str:
        sub = 0 if self.subtracted is None else self.subtracted.n_terms
        return (
            f"FisherBlockOperator(n_samples={self.n_samples}, dim_a={self.dim_a}, dim_g={self.dim_g}, "
            f"subtracted_terms={sub}, dtype={self.dtype})"
        )

    def minus(self, terms: KronSum) -> FisherBlockOperator:
        """A new operator for ``R(F - subtracted - terms)`` sharing this one's statistics."""
        if not isinstance(terms, KronSum):
            raise TypeError(f"`terms` must be a KronSum, got {type(terms).__name__}")
        if self.subtracted is not None:
            terms = KronSum(self.subtracted.left + tuple(terms.left), self.subtracted.right + tuple(terms.right))
        out = FisherBlockOperator.__new__(FisherBlockOperator)
        out.__dict__.update(self.__dict__)
        out._set_subtracted(terms, True)
        return out

    # ----------------------------------------------------------------------------------------
    # products
    # ----------------------------------------------------------------------------------------
    def _block(self, V: Any, name: str, rows: int) -> tuple[Any, bool]:
        xp = self._xp
        _array.namespace((name, V), ("a", self.a))
        _array.same_device((name, V), ("a", self.a))
        # Floating and finite: an integer block would be cast silently, and a product with NaN
        # would be reported later as a non-finite Fisher block. The check is a pass over V,
        # against the product's O(N (d_a^2 + d_g^2)) flops per column.
        _validate.check_array(V, name, xp, ndim=(1, 2))
        vector = V.ndim == 1
        if V.ndim not in (1, 2) or V.shape[0] != rows:
            raise ValueError(f"`{name}` must have shape ({rows}, k) or ({rows},), got {tuple(V.shape)}")
        V = V[:, None] if vector else V
        return _array.astype(V, _array.result_dtype(xp, V, self.a), xp), vector

    def _weighted_gram(self, X: Any, Y: Any, V: Any) -> Any:
        """``vec(Y^T diag(x_t^T V_j x_t) Y)`` for every column ``vec(V_j)`` of V."""
        xp = self._xp
        n, dx = X.shape
        dy = Y.shape[1]
        k = V.shape[1]
        # V[p dx + q, j] = V_j[p, q], so reshaping V to (dx, dx k) lines up the columns
        # q k + j of X @ V3 with x_t^T V_j; no transpose copy is needed.
        XV = xp.reshape(X @ xp.reshape(V, (dx, dx * k)), (n, dx, k))
        c = xp.sum(XV * X[:, :, None], axis=1) / n
        Z = xp.reshape(Y[:, :, None] * c[:, None, :], (n, dy * k))
        return xp.reshape(Y.T @ Z, (dy * dy, k))

    def _scaled_gram(self, X: Any, Y: Any, V: Any) -> Any:
        """:meth:`_weighted_gram` of the normalised statistics, scaled back (exact)."""
        with _array.quiet_floating_point():  # an overflow of R(F) V itself shows in its result
            return _checks.scaled(self._weighted_gram(X, Y, V), self._scale_exponent)

    def matmat(self, V: Any) -> Any:
        """``R(F) @ V`` for ``V`` of shape ``(d_a^2, k)`` (or ``(d_a^2,)``), floating and finite
        (``ValueError`` / ``TypeError`` naming ``V`` otherwise)."""
        V, vector = self._block(V, "V", self.shape[1])
        out = self._scaled_gram(self._a_unit, self._g_unit, V)
        if self._sub_left is not None:
            out = out - self._sub_left @ (self._sub_right.T @ V)
        return out[:, 0] if vector else out

    def rmatmat(self, U: Any) -> Any:
        """``R(F)^T @ U`` for ``U`` of shape ``(d_g^2, k)`` (or ``(d_g^2,)``), floating and
        finite (``ValueError`` / ``TypeError`` naming ``U`` otherwise)."""
        U, vector = self._block(U, "U", self.shape[0])
        out = self._scaled_gram(self._g_unit, self._a_unit, U)
        if self._sub_left is not None:
            out = out - self._sub_right @ (self._sub_left.T @ U)
        return out[:, 0] if vector else out

    matvec = matmat
    rmatvec = rmatmat

    # ----------------------------------------------------------------------------------------
    # dense references and cheap summaries
    # ----------------------------------------------------------------------------------------
    def to_dense(self) -> Any:
        """The explicit block ``F - subtracted``, shape ``(d_g d_a, d_g d_a)`` (for tests).

        Built from the per-sample gradients ``g_t ⊗ a_t``: ``O(N d_a^2 d_g^2)`` flops and
        ``d_a^2 d_g^2`` memory.
        """
        xp = self._xp
        n = self.n_samples
        J = xp.reshape(self.g[:, :, None] * self.a[:, None, :], (n, self.dim_g * self.dim_a))
        F = (J.T @ J) / n
        if self.subtracted is not None:
            F = F - self.subtracted.to_dense()
        return F

    def rearranged(self) -> Any:
        """The explicit ``R(F - subtracted)``, shape ``(d_g^2, d_a^2)`` (for tests).

        ``(1/N) sum_t vec(g_t g_t^T) vec(a_t a_t^T)^T``: ``O(N d_a^2 d_g^2)`` flops.
        """
        xp = self._xp
        n = self.n_samples
        Kg = xp.reshape(self.g[:, :, None] * self.g[:, None, :], (n, self.dim_g**2))
        Ka = xp.reshape(self.a[:, :, None] * self.a[:, None, :], (n, self.dim_a**2))
        R = (Kg.T @ Ka) / n
        if self._sub_left is not None:
            R = R - self._sub_left @ self._sub_right.T
        return R

    def kfac(self) -> KronSum:
        """K-FAC's single term ``E[g g^T] ⊗ E[a a^T]`` (``O(N (d_a^2 + d_g^2))`` flops)."""
        left, right = _checks.kfac_pair(self.a, self.g, self._xp)
        return KronSum((left,), (right,))

    def trace(self) -> float:
        """``tr(F - subtracted)``; ``tr F = E[|a|^2 |g|^2]``, ``O(N (d_a + d_g))`` flops."""
        xp = self._xp
        na = xp.sum(self.a * self.a, axis=1)
        ng = xp.sum(self.g * self.g, axis=1)
        out = float(xp.mean(na * ng))
        if self.subtracted is not None:
            out -= self.subtracted.trace()
        return out

    def frobenius_norm(self) -> float:
        r"""``|F - subtracted|_F`` without forming F.

        ``|F|_F^2 = (1/N^2) sum_{s,t} (g_s^T g_t)^2 (a_s^T a_t)^2`` (Gram matrices in chunks of
        rows, ``O(N^2 (d_a + d_g))`` flops, ``O(N min(N, 1024))`` memory),
        ``<F, L ⊗ R> = (1/N) sum_t (g_t^T L g_t)(a_t^T R a_t)`` and
        ``<L_i ⊗ R_i, L_j ⊗ R_j> = <L_i, L_j><R_i, R_j>``. The expansion subtracts squares, so
        a result far below ``|F|_F`` carries an absolute error ``~ eps |F|_F^2 / result``:
        to relative ``1e-6`` in float64 down to ``|F - subtracted| ~ 1e-5 |F|``.
        """
        xp = self._xp
        a, g, n = self.a, self.g, self.n_samples
        total = 0.0
        for start in range(0, n, _GRAM_CHUNK):
            stop = min(start + _GRAM_CHUNK, n)
            Ga = a[start:stop, :] @ a.T
            Gg = g[start:stop, :] @ g.T
            P = Ga * Gg
            total += float(xp.sum(P * P))
        total /= n * n
        if self.subtracted is not None:
            L = self._sub_left
            R = self._sub_right
            # <F, L_i ⊗ R_i> via the product R(F) vec(R_i) (two GEMMs), then Gram terms.
            cross = xp.sum(L * self._weighted_gram(self.a, self.g, R), axis=0)
            total -= 2.0 * float(xp.sum(cross))
            total += float(xp.sum((L.T @ L) * (R.T @ R)))
        return max(total, 0.0) ** 0.5
