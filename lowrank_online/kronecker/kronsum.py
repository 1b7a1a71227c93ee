"""Sums of Kronecker products: the container and the ``A⊗B + C⊗D`` solve.

Paper 002 (Koroko et al.), Sec. 3.4: the generalised-eigen solve of Martens & Grosse (2015).
All products follow the row-major convention of ``docs/conventions.rst``:
``(L ⊗ R) vec(X) = vec(L X R^T)`` with ``vec`` the row-major flattening.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import array_api_extra as xpx

from .. import _array, _backend, _linalg, _validate
from . import _checks

__all__ = ["KronSum", "KronSumInverse"]


class KronSum(NamedTuple):
    r"""A sum of Kronecker products ``sum_i left[i] ⊗ right[i]``.

    Returned by :func:`~lowrank_online.nearest_kron`, :func:`~lowrank_online.kpsvd`,
    :func:`~lowrank_online.kfac_corrected` and :func:`~lowrank_online.kfac_factors`. For a
    Fisher block the left factors are on the ``g`` (output, ``d_g x d_g``) side and the right
    factors on the ``a`` (input, ``d_a x d_a``) side.

    Attributes
    ----------
    left : tuple of arrays, each (m1, n1)
    right : tuple of arrays, each (m2, n2)

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import KronSum
    >>> ks = KronSum((2.0 * xp.eye(2),), (xp.asarray([[1.0, 1.0], [0.0, 1.0]]),))
    >>> ks.shape
    (4, 4)
    >>> ks.matvec(xp.asarray([[1.0, 2.0], [3.0, 4.0]]))  # 2 * X @ R.T
    Array([[ 6.,  4.],
           [14.,  8.]], dtype=array_api_strict.float64)
    """

    left: tuple[Any, ...]
    right: tuple[Any, ...]

    @property
    def n_terms(self) -> int:
        return len(self.left)

    @property
    def left_shape(self) -> tuple[int, int]:
        return _factor_shapes(self)[0]

    @property
    def right_shape(self) -> tuple[int, int]:
        return _factor_shapes(self)[1]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the dense sum: ``(m1 m2, n1 n2)``."""
        (m1, n1), (m2, n2) = _factor_shapes(self)
        return (m1 * m2, n1 * n2)

    def to_dense(self) -> Any:
        """The explicit ``(m1 m2) x (n1 n2)`` matrix (for tests and small problems)."""
        xp = _namespace(self)
        out = xpx.kron(self.left[0], self.right[0], xp=xp)
        for L, R in zip(self.left[1:], self.right[1:], strict=True):
            out = out + xpx.kron(L, R, xp=xp)
        return out

    def matvec(self, x: Any) -> Any:
        """Product with ``x``: a vector of length ``n1 n2`` (row-major ``vec(X)``) or matrices
        ``X`` of shape ``(..., n1, n2)``; returns ``vec(sum_i L_i X R_i^T)`` (or the matrices).

        Cost ``2 (m1 n1 n2 + m1 n2 m2)`` flops per term and matrix: the sum is never formed.
        """
        xp = _namespace(self)
        (m1, n1), (m2, n2) = _factor_shapes(self)
        _array.namespace(("x", x), ("left[0]", self.left[0]))
        _array.same_device(("x", x), ("left[0]", self.left[0]))
        _validate.check_array(x, "x", xp, ndim=tuple(range(1, 8)))
        vector = _matrix_form(x, "x", (n1, n2))
        X = xp.reshape(x, (n1, n2)) if vector else x
        out = None
        for L, R in zip(self.left, self.right, strict=True):
            term = xp.matmul(xp.matmul(L, X), R.T)
            out = term if out is None else out + term
        return xp.reshape(out, (m1 * m2,)) if vector else out

    def trace(self) -> float:
        """``sum_i tr(L_i) tr(R_i)``, the trace of the square sum."""
        xp = _namespace(self)
        return sum(
            float(xp.linalg.trace(L)) * float(xp.linalg.trace(R)) for L, R in zip(self.left, self.right, strict=True)
        )

    def inverse(self, *, damping: float = 0.0, pi: float | None = None) -> KronSumInverse:
        """:class:`KronSumInverse` of this sum (one or two terms, square symmetric factors)."""
        return KronSumInverse.from_kronsum(self, damping=damping, pi=pi)


def _namespace(ks: KronSum) -> Any:
    if len(ks.left) == 0 or len(ks.left) != len(ks.right):
        raise ValueError(
            f"a KronSum needs as many left as right factors (at least one), got {len(ks.left)} and {len(ks.right)}"
        )
    named = [(f"left[{i}]", L) for i, L in enumerate(ks.left)]
    named += [(f"right[{i}]", R) for i, R in enumerate(ks.right)]
    return _array.namespace(*named)


def _factor_shapes(ks: KronSum) -> tuple[tuple[int, int], tuple[int, int]]:
    _namespace(ks)
    ls = {tuple(L.shape) for L in ks.left}
    rs = {tuple(R.shape) for R in ks.right}
    if len(ls) != 1 or len(rs) != 1 or any(len(s) != 2 for s in ls | rs):
        raise ValueError(f"the factors of a KronSum must be 2-D with one shape per side, got {ls} and {rs}")
    return ls.pop(), rs.pop()


def _matrix_form(x: Any, name: str, shape: tuple[int, int]) -> bool:
    """True when ``x`` is a row-major vector; validate the matrix form otherwise."""
    size = shape[0] * shape[1]
    if x.ndim == 1:
        if x.shape[0] != size:
            raise ValueError(f"`{name}` has length {x.shape[0]}, expected {size} = {shape[0]} x {shape[1]}")
        return True
    if x.ndim < 2 or tuple(x.shape[-2:]) != shape:
        raise ValueError(
            f"`{name}` must be a vector of length {size} or matrices of shape (..., {shape[0]}, {shape[1]}), "
            f"got shape {tuple(x.shape)}"
        )
    return False


# --------------------------------------------------------------------------------------------
# (A ⊗ B + C ⊗ D)^{-1}
# --------------------------------------------------------------------------------------------
class KronSumInverse:
    r"""Solver for ``(A ⊗ B + C ⊗ D) vec(X) = vec(V)``: set up once, apply many times.

    Parameters
    ----------
    A : array, shape (p, p)
        Symmetric positive definite (after damping).
    B : array, shape (q, q)
        Symmetric positive definite (after damping).
    C : array, shape (p, p), optional
        Symmetric, any inertia. ``C`` and ``D`` are given together or not at all (then the
        solver is the plain ``(A ⊗ B)^{-1}``).
    D : array, shape (q, q), optional
        Symmetric, any inertia.
    damping : float, optional
        Factored Tikhonov damping ``lambda >= 0`` (Martens & Grosse 2015, Sec. 6.3; paper 002,
        Sec. 2): ``A + pi sqrt(lambda) I`` and ``B + sqrt(lambda) / pi I`` replace A and B.
        Default 0.
    pi : float, optional
        The split of the damping between the two sides. Default: the trace-norm choice
        ``pi = sqrt((tr A / p) / (tr B / q))``.
    eigenvalue_floor : float, optional
        Replace the pencil's eigenvalues ``1 + s1_i s2_j`` below this value by it, which makes
        the solver the inverse of a positive definite matrix ``>= floor * (A ⊗ B)`` even when
        ``A ⊗ B + C ⊗ D`` is indefinite (a Kronecker-sum *approximation* of a PSD matrix can
        be: its second term is fitted in Frobenius norm, not constrained to keep the sum PSD).
        ``None`` (default) solves with the sum as given.
    check_finite : bool, optional
        Check the inputs for NaN and infinity. Default True.

    Attributes
    ----------
    basis_left : array, shape (p, p)
        ``K1`` with ``K1^T A K1 = I`` and ``K1^T C K1 = diag(s1)``.
    basis_right : array, shape (q, q)
        ``K2`` with ``K2^T B K2 = I`` and ``K2^T D K2 = diag(s2)``.
    eigenvalues : array, shape (p, q)
        ``1 + s1 s2^T``, the eigenvalues of the pencil ``(A ⊗ B + C ⊗ D, A ⊗ B)`` (after
        ``eigenvalue_floor``); the sum is positive definite exactly when all are positive (see
        :attr:`positive_definite`).

    Raises
    ------
    ValueError
        When A or B (after damping) is not positive definite, the sum is singular, a matrix is
        not square and symmetric, shapes disagree, or values are not finite.
    TypeError
        On non-floating dtypes or arrays of different namespaces.
    DecompositionError
        When an eigendecomposition fails on every path of its fallback chain.

    Notes
    -----
    Paper 002, Sec. 3.4 (after Martens & Grosse 2015, App. B). With ``A = Q_A diag(w) Q_A^T``
    the whitening ``W_A = Q_A diag(w)^{-1/2}`` has ``W_A^T A W_A = I``; the symmetric
    eigendecomposition ``W_A^T C W_A = E_1 diag(s_1) E_1^T`` gives ``K_1 = W_A E_1``, and
    likewise ``K_2`` from B and D. Then
    ``A ⊗ B + C ⊗ D = (K_1 ⊗ K_2)^{-T} (I + diag(s_1) ⊗ diag(s_2)) (K_1 ⊗ K_2)^{-1}`` and,
    in the row-major matrix form ``(L ⊗ R) vec(X) = vec(L X R^T)``,

    .. math:: X = K_1 \left[(K_1^T V K_2) \oslash (\mathbf{1}\mathbf{1}^T + s_1 s_2^T)\right] K_2^T .

    Positive definiteness of A and B is checked on the eigenvalues of the whitening: the
    smallest must exceed ``p eps`` times the largest (a message then names the matrix and its
    smallest eigenvalue). The sum is refused as singular when a ``1 + s1_i s2_j`` is below
    ``4 max(p, q) eps`` times ``1 + |s1_i s2_j|``, the rounding level of that sum of two
    terms (so ``C ⊗ D = -A ⊗ B`` is refused). The factorisations run in float64 where the
    device has it; each eigendecomposition has a fallback (the first: ``eigh``, then the SVD
    of the positive definite matrix; the second: ``eigh``, then the same chain on the matrix
    shifted to be positive semi-definite), and :class:`~lowrank_online.DecompositionError` is
    raised when both paths of one fail.

    Cost: setup two ``eigh`` of each size and a few GEMMs, ``~ 10 (p^3 + q^3)`` flops;
    ``apply`` ``4 (p^2 q + p q^2)`` flops per right-hand side, memory ``O(p^2 + q^2)``. The
    solve is exact (to rounding, with error ``~ eps cond``): no iteration.

    References
    ----------
    .. [1] A. Koroko et al., "Efficient approximations of the Fisher matrix in neural networks
       using Kronecker product singular value decomposition", ESAIM Proc. (2023), Sec. 3.4.
    .. [2] J. Martens, R. Grosse, "Optimizing neural networks with Kronecker-factored
       approximate curvature", ICML 2015, Sec. 6.3 and App. B.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from lowrank_online import KronSumInverse
    >>> A = xp.asarray([[2.0, 0.5], [0.5, 1.0]]); B = xp.asarray([[1.0, 0.0], [0.0, 3.0]])
    >>> C = xp.asarray([[1.0, 0.0], [0.0, -0.5]]); D = xp.eye(2)
    >>> solver = KronSumInverse(A, B, C, D)
    >>> X = solver.apply(xp.asarray([[1.0, 2.0], [3.0, 4.0]]))
    >>> R = A @ X @ B.T + C @ X @ D.T  # the residual identity of the row-major form
    >>> [round(float(v), 10) for v in xp.reshape(R, (-1,))]
    [1.0, 2.0, 3.0, 4.0]
    """

    def __init__(
        self,
        A: Any,
        B: Any,
        C: Any = None,
        D: Any = None,
        *,
        damping: float = 0.0,
        pi: float | None = None,
        eigenvalue_floor: float | None = None,
        check_finite: bool = True,
    ) -> None:
        check_finite = _validate.check_bool(check_finite, "check_finite")
        names = (("A", A), ("B", B), ("C", C), ("D", D))
        xp = _array.namespace(*names)
        dev = _array.same_device(*names)
        _checks.square(A, "A", xp, check_finite=check_finite)
        _checks.square(B, "B", xp, check_finite=check_finite)
        p, q = A.shape[0], B.shape[0]
        if (C is None) != (D is None):
            raise ValueError("`C` and `D` must be given together (or both omitted)")
        if C is not None:
            _checks.square(C, "C", xp, check_finite=check_finite, size=p)
            _checks.square(D, "D", xp, check_finite=check_finite, size=q)
        for name, M in names:
            if M is not None:
                _validate.check_symmetric(M, name, xp)
        damping = _validate.check_real(damping, "damping", low=0.0)
        dtype = _array.result_dtype(xp, *(M for _, M in names))
        be = _backend.Precision(xp, dev, dtype)
        Ac, Bc = be.to_core(A), be.to_core(B)
        if damping > 0.0:
            if pi is None:
                ta, tb = float(be.cxp.linalg.trace(Ac)) / p, float(be.cxp.linalg.trace(Bc)) / q
                if not (ta > 0.0 and tb > 0.0):
                    raise ValueError(
                        f"the trace-norm split `pi` needs positive traces, got tr(A)/p = {ta:.3g} and "
                        f"tr(B)/q = {tb:.3g}; pass `pi` explicitly"
                    )
                pi = math.sqrt(ta / tb)
            else:
                pi = _validate.check_real(pi, "pi", low=0.0, low_open=True)
            root = math.sqrt(damping)
            Ac = Ac + (pi * root) * be.eye(p)
            Bc = Bc + (root / pi) * be.eye(q)
        K1, s1 = _whitened_eigh(Ac, None if C is None else be.to_core(C), "A", "C", be)
        K2, s2 = _whitened_eigh(Bc, None if D is None else be.to_core(D), "B", "D", be)
        mu = 1.0 + s1[:, None] * s2[None, :]
        if eigenvalue_floor is not None:
            floor = _validate.check_real(eigenvalue_floor, "eigenvalue_floor", low=0.0, low_open=True)
            mu = be.cxp.clip(mu, min=floor)
        # Each 1 + s1_i s2_j is a sum of two terms whose rounding is ~ eps (1 + |s1_i s2_j|):
        # compared with that, not with the largest eigenvalue, so that a sum that cancels
        # everywhere (C ⊗ D = -A ⊗ B, where every eigenvalue is rounding) is singular too.
        size = 1.0 + be.cxp.abs(s1[:, None] * s2[None, :])
        ratio = be.cxp.abs(mu) / size
        worst = int(be.cxp.argmin(be.cxp.reshape(ratio, (-1,))))
        low = float(be.cxp.reshape(ratio, (-1,))[worst])
        if not low > 4 * max(p, q) * be.eps:
            value = float(be.cxp.reshape(mu, (-1,))[worst])
            raise ValueError(
                "A ⊗ B + C ⊗ D is singular to working precision (a generalised eigenvalue "
                f"1 + s1_i s2_j is {value:.3g}, {low:.2g} of its terms' size); add damping"
            )
        self._xp = xp
        self.device = dev
        self.dtype = dtype
        self.shape = (p * q, p * q)
        self.damping = damping
        self.pi = pi
        self.basis_left = be.from_core(K1)
        self.basis_right = be.from_core(K2)
        self.eigenvalues = be.from_core(mu)
        self._inv = be.from_core(1.0 / mu)
        self._positive = float(be.cxp.min(mu)) > 0.0

    @classmethod
    def from_kronsum(cls, terms: KronSum, *, damping: float = 0.0, pi: float | None = None) -> KronSumInverse:
        """Solver for a :class:`KronSum` of one or two square symmetric terms (the first one
        positive definite after damping)."""
        if not isinstance(terms, KronSum):
            raise TypeError(f"`terms` must be a KronSum, got {type(terms).__name__}")
        if terms.n_terms not in (1, 2):
            raise ValueError(f"KronSumInverse handles one or two terms, got {terms.n_terms}")
        extra = (terms.left[1], terms.right[1]) if terms.n_terms == 2 else (None, None)
        return cls(terms.left[0], terms.right[0], *extra, damping=damping, pi=pi)

    def __array_namespace__(self, api_version: str | None = None) -> Any:
        return self._xp

    @property
    def positive_definite(self) -> bool:
        """Whether ``A ⊗ B + C ⊗ D`` (damped) is positive definite: all eigenvalues > 0."""
        return self._positive

    def apply(self, V: Any, *, check_finite: bool = True) -> Any:
        """Solve for ``X``: ``V`` is a row-major vector of length ``p q`` or matrices of shape
        ``(..., p, q)``; the result has the same layout.

        Cost ``4 (p^2 q + p q^2)`` flops per right-hand side (four GEMMs).
        """
        check_finite = _validate.check_bool(check_finite, "check_finite")
        xp = _array.namespace(("V", V), ("A", self.basis_left))
        _array.same_device(("V", V), ("A", self.basis_left))
        _validate.check_array(V, "V", xp, ndim=tuple(range(1, 8)), finite=check_finite)
        p, q = self.basis_left.shape[0], self.basis_right.shape[0]
        vector = _matrix_form(V, "V", (p, q))
        X = xp.reshape(V, (p, q)) if vector else V
        K1, K2 = self.basis_left, self.basis_right
        Y = xp.matmul(xp.matmul(K1.T, X), K2) * self._inv
        X = xp.matmul(xp.matmul(K1, Y), K2.T)
        return xp.reshape(X, (p * q,)) if vector else X


def _whitened_eigh(P: Any, Q: Any, pname: str, qname: str, be: _backend.Precision) -> tuple[Any, Any]:
    """``K`` with ``K^T P K = I`` and ``K^T Q K = diag(s)`` (P positive definite, Q symmetric)."""
    cxp = be.cxp
    d = P.shape[0]
    w, E = _linalg.small_eigh(P, cxp)
    top, low = float(w[0]), float(w[-1])
    if not (top > 0.0 and low > d * be.eps * top):
        raise ValueError(
            f"`{pname}` is not positive definite: its smallest eigenvalue is {low:.3g} "
            f"(largest {top:.3g}); pass damping > 0 or a positive definite `{pname}`"
        )
    W = E / cxp.sqrt(w)[None, :]
    if Q is None:
        return W, be.zeros((d,))
    M = _linalg.symmetrize(W.T @ Q @ W)
    try:
        s, F = cxp.linalg.eigh(M)
        if _linalg._finite(cxp, s, F):
            return W @ F, s
    except _linalg.NUMERICAL_FAILURES:
        pass
    s, F = _shifted_eigh(M, qname, cxp)
    return W @ F, s


def _shifted_eigh(M: Any, name: str, cxp: Any) -> tuple[Any, Any]:
    """Fallback eigendecomposition of a symmetric ``M`` of any inertia, eigenvalues ascending.

    ``M + |M|_F I`` is positive semi-definite, so :func:`~lowrank_online._linalg.small_eigh`
    (``eigh``, then the SVD, which equals the EVD of a PSD matrix) applies; the shift is
    subtracted afterwards, at an absolute cost of ``eps |M|_F``, the accuracy of ``eigh``
    itself. :class:`~lowrank_online.DecompositionError` when both paths fail.
    """
    shift = float(cxp.linalg.matrix_norm(M))
    try:
        w, F = _linalg.small_eigh(M + shift * cxp.eye(M.shape[0], dtype=M.dtype, device=_array.device(M)), cxp)
    except _linalg.DecompositionError as err:
        raise _linalg.DecompositionError(f"eigendecomposition of the whitened `{name}` failed: {err}") from err
    return cxp.flip(w, axis=0) - shift, cxp.flip(F, axis=1)
