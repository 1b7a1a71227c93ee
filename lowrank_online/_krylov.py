"""Randomized block Krylov methods behind ``rsvd(method="block_krylov")`` and ``reigh(...)``.

* :func:`svd`: block Golub-Kahan-Lanczos bidiagonalisation from a Gaussian start block, with
  full re-orthogonalisation, and the Rayleigh-Ritz extraction of Musco & Musco (2015): the
  SVD of ``U^T X`` restricted to the Krylov bases, which the recurrence hands over for free.
* :func:`nystrom`: block Lanczos on a symmetric PSD matrix, and the Nystrom approximation of
  its Krylov basis (Tropp & Webber 2023, block Krylov Nystrom), formed from the
  Lanczos coefficients alone, so it costs no product of its own.

Both keep the *coefficients* of every projection, so that ``X V = U B`` (resp.
``X Q = Q T``) holds to rounding with small, known ``B`` (``T``). That gives the residual norm
of every Ritz pair from the small matrices once the next block product is known: the
a-posteriori estimate and the ``tol`` stopping rule cost one block product, not a pass over
the result.

Everything here works on the hooks of :class:`~lowrank_online._backend.Backend` (``persist``,
``residual``, ``matmul``, ``to_core`` / ``from_core``, ``join_columns``), so the tall bases
stay on the workers of a distributed backend and only the small coefficient blocks travel.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _array, _backend, _linalg

__all__: list[str] = []  # private module

# Relative residual floor of a Ritz pair (as lanczos_svd's): below FLOOR sqrt(max(m, n)) eps
# a residual is rounding and cannot be driven down; a smaller tol is raised to it.
FLOOR = 10.0


# Above cond(W) = 1 / sqrt(_LEAN) = 100 the normalised block is projected against the basis once
# more (its lean is at most 100 eps below).
_LEAN = 1e-4


class Extension(NamedTuple):
    """``W = B @ coef + P @ R`` with ``P`` orthonormal and orthogonal to the basis ``B``."""

    P: Any  # (d, b), tall
    coef: Any  # (K, b) core, or None when there was no basis
    R: Any  # (b, b) core


def extend(W: Any, B: Any, be: _backend.Backend, rng: Any) -> Extension:
    """Orthogonalise the block ``W`` (d x b) against the orthonormal ``B`` (d x K) and normalise it.

    Two passes of block classical Gram-Schmidt (twice is enough: Giraud, Langou, Rozloznik
    2005), then CholeskyQR through the eigendecomposition of the residual's Gram matrix, with a
    second CholeskyQR pass when that Gram matrix is not well conditioned. The block keeps its
    ``b`` columns whatever happens, so the Krylov recurrences keep their shape:

    * a normalised residual whose Gram matrix has cond > 100 is projected against B once more
      (its small directions lean into span(B) by up to ``eps cond``);
    * a residual whose Gram matrix has cond > ``(CHOLQR2_FLOOR eps)^-1/2`` (a direction at the
      rounding level: the block lies partly in span(B), or is rank deficient because an
      invariant subspace was found) goes through
      Householder QR after a rounding-level Gaussian perturbation, is projected twice more and
      orthonormalised again. The directions that were noise become random directions
      orthogonal to B whose coefficients in ``R`` are at the rounding level, which is exactly
      what they are: the recurrence continues, as a restart would, and the coefficient
      relations stay exact to rounding.

    Returns the new block ``P`` and the cores ``coef`` (the passes' coefficients summed) and
    ``R`` (CholeskyQR2's ``R_2 R_1``). Cost ``8 d K b + 4 d b^2`` flops in GEMMs on the common
    path (``+ 4 d b^2`` for the second CholeskyQR pass, ``+ 4 d K b`` for the extra
    projection), and one round trip to the small cores on a distributed backend per pass.
    """
    xp, cxp = be.xp, be.cxp
    W0 = W = be.persist(W)
    if B is None:
        G = be.to_core(W.T @ W)
        coef = None
    else:
        # The coefficients are persisted before the residuals use them: a key computed once
        # inside a persisted graph and again inside a fetched one is submitted twice under
        # different optimisations, which the distributed scheduler leaves waiting (held) forever.
        H1 = be.persist(B.T @ W)
        W1 = be.persist(be.residual(W, B, H1))
        H2 = be.persist(B.T @ W1)
        W = be.persist(be.residual(W1, B, H2))
        H1, H2, G = be.to_core(H1, H2, W.T @ W)
        coef = H1 + H2
    if not _linalg._finite(cxp, G):
        raise FloatingPointError("non-finite values in a Krylov block")
    mu, V = _linalg.small_eigh(G, cxp)
    mu_max, mu_min = float(mu[0]), float(mu[-1])
    if not (mu_max > 0.0 and mu_min > _linalg.CHOLQR2_FLOOR * be.eps * mu_max):
        (scale,) = _array.to_floats(xp, xp.linalg.vector_norm(W0))
        P = _robust_basis(W, B, scale, be, rng)
        return Extension(P, coef, be.to_core(P.T @ W))
    # W = P R with P = W V mu^-1/2 and R = mu^1/2 V^T; P spans exactly what W spans, whatever the
    # accuracy of the factors.
    R = cxp.sqrt(mu)[:, None] * V.T
    P = be.persist(be.matmul(W, be.from_core(V / cxp.sqrt(mu)[None, :])))
    if mu_min >= mu_max / _linalg.KAPPA_FAST**2:  # orthonormal to ~cond^2 eps <= 64 eps
        return Extension(P, coef, R)
    if B is not None and mu_min < mu_max * _LEAN:
        # A direction of W small against the others inherits the rounding of the projection of
        # the large ones: it leans into span(B) by up to eps cond(W). Project once more.
        H3 = be.persist(B.T @ P)
        P = be.persist(be.residual(P, B, H3))
        coef = coef + be.to_core(H3) @ R
    # CholeskyQR2: the second pass restores the orthonormality the first lost (~cond^2 eps).
    mu2, V2 = _linalg.small_eigh(be.to_core(P.T @ P), cxp)
    if not float(mu2[-1]) > _linalg.CHOLQR2_FLOOR * be.eps * float(mu2[0]):  # pragma: no cover - cond < 1e6 above
        P = _robust_basis(P, B, 1.0, be, rng)
        return Extension(P, coef, be.to_core(P.T @ W))
    P = be.persist(be.matmul(P, be.from_core(V2 / cxp.sqrt(mu2)[None, :])))
    return Extension(P, coef, (cxp.sqrt(mu2)[:, None] * V2.T) @ R)


def _robust_basis(W: Any, B: Any, scale: float, be: _backend.Backend, rng: Any) -> Any:
    """Orthonormal ``P`` spanning the numerically significant part of ``W`` (orthogonal to B),
    completed by directions orthogonal to B where ``W`` has none."""
    d, b = W.shape
    G = be.normal(rng, (d, b))
    # The perturbation is at the rounding level of W (or unit for an exactly zero block), so it
    # moves no significant direction and gives the null ones a random orientation.
    noise = be.eps * scale / math.sqrt(d * b) if scale > 0.0 else 1.0
    P = be.persist(be.xp.linalg.qr(W + noise * G).Q)
    if B is not None:
        for _ in range(2):
            P = be.persist(be.residual(P, B, B.T @ P))
    return _linalg.orthonormalize(P, be, passes=2)


def _pad_rows(M: Any, rows: int, be: _backend.Backend) -> Any:
    if M.shape[0] == rows:
        return M
    return be.cxp.concat([M, be.zeros((rows - M.shape[0], M.shape[1]))], axis=0)


class KrylovResult(NamedTuple):
    U: Any  # tall (first dimension), ``rank`` columns or fewer (nystrom on a rank-deficient X)
    values: Any  # core: singular values (svd) or eigenvalues (nystrom), descending
    Vh: Any  # (rank, n) for svd; None for nystrom
    residuals: Any  # core (rank,) residual norms, or None when not computed
    steps: int  # block products with X (svd: and as many with X^T)
    block: int  # columns per block
    products: int  # matrix-vector products (a b-column block counts b)
    converged: bool


def _limits(values: Any, tol: float, floor: float, be: _backend.Backend) -> Any:
    return be.cxp.clip(tol * values, min=floor * float(values[0]))


def svd(op: Any, rank: int, b: int, steps: int, tol: float | None, want_residuals: bool,
        rng: Any, be: _backend.Backend) -> KrylovResult:
    """Block Golub-Kahan-Lanczos with ``steps`` products with X and as many with X^T.

    Step j: ``U_j = orth(X V_j - U_{<j} C)``, ``V_{j+1} = orth(X^T U_j - V_{<=j} D)``. The
    rows ``U_j^T X = D^T V_{<=j}^T + R^T V_{j+1}^T`` assemble ``Ct = U^T X V`` (``jb x (j+1)b``),
    so ``U U^T X = U Ct V^T`` exactly: the SVD of ``Ct`` is the Rayleigh-Ritz extraction from
    the block Krylov space ``[X Omega, (X X^T) X Omega, ...]``. The Ritz triplets satisfy
    ``X^T u = s v``; ``|X v - s u|`` follows from the columns ``U^T X V_{j+1}`` of the next
    product with X, so ``tol`` (every ``|X v_i - s_i u_i| <= tol s_i``) is tested one block
    product late, and the triplets returned are those the residuals were computed for.
    """
    m, n = op.shape
    cxp = be.cxp
    xq = op.xp
    floor = FLOOR * math.sqrt(max(m, n)) * be.eps
    omega = _array.standard_normal(rng, (n, b), op.dtype, xq, op.device)
    Vlast = Vb = _linalg.orthonormalize(omega, be, passes=2)
    Ub = None
    acols: list[Any] = []  # block column j of B = U^T X V from the product X V_j
    crows: list[Any] = []  # block row j of Ct = U^T X V from the product X^T U_j
    products = 0
    extraction = None  # (x, s, yh) of the last Ct and the number of steps it used
    residuals = None
    converged = False
    done = 0
    for j in range(steps + (1 if want_residuals else 0)):
        # -- X V_j: the next U block, and the residuals of the previous extraction
        ext = extend(op.matmat(Vlast), Ub, be, rng)
        products += b
        acols.append(ext.R if ext.coef is None else cxp.concat([ext.coef, ext.R], axis=0))
        Ub = ext.P if Ub is None else be.persist(be.join_columns([Ub, ext.P]))
        if extraction is not None and (tol is not None or j == steps):
            residuals = _svd_residuals(acols, extraction, rank, b, be)
            if tol is not None and bool(cxp.all(residuals <= _limits(extraction[1][:rank], tol, floor, be))):
                converged = True
                break
        if j == steps:  # the product was the estimate's
            break
        # -- X^T U_j: the next V block and the block row of Ct
        ext = extend(op.rmatmat(ext.P), Vb, be, rng)
        products += b
        crows.append(cxp.concat([ext.coef.T, ext.R.T], axis=1))
        Vb = be.persist(be.join_columns([Vb, ext.P]))
        Vlast = ext.P
        done = j + 1
        residuals = None
        if (j + 1) * b >= rank and (tol is not None or j + 1 == steps):
            Ct = cxp.concat([_pad_rows(r.T, (j + 2) * b, be).T for r in crows], axis=0)
            x, s, yh = _linalg.small_svd(Ct, cxp)
            extraction = (x, s, yh)
    x, s, yh = extraction
    U = be.matmul(Ub[:, : done * b], be.from_core(x[:, :rank]))
    Vh = be.matmul(Vb[:, : (done + 1) * b], be.from_core(yh[:rank, :].T)).T
    return KrylovResult(U, s[:rank], Vh, residuals, done, b, products, converged if tol is not None else None)


def _svd_residuals(acols: list[Any], extraction: tuple, rank: int, b: int, be: _backend.Backend) -> Any:
    """``|X v_i - s_i u_i|`` for the Ritz triplets of the previous ``Ct``.

    ``X V = U B`` with ``B`` upper block triangular, assembled from the coefficients of the
    products with X; for ``v = V y`` and ``u = U x``: ``X v - s u = U (B y - [s x; 0])``.
    """
    cxp = be.cxp
    x, s, yh = extraction
    K = len(acols) * b
    Bm = cxp.concat([_pad_rows(c, K, be) for c in acols], axis=1)
    y = yh[:rank, :].T
    r = Bm @ y - _pad_rows(x[:, :rank] * s[None, :rank], K, be)
    return cxp.linalg.vector_norm(r, axis=0)


def nystrom(op: Any, rank: int, b: int, steps: int, tol: float | None, want_residuals: bool,
            rng: Any, be: _backend.Backend) -> tuple[KrylovResult, Any]:
    """Block Lanczos with ``steps`` products with the symmetric PSD X, and the Nystrom
    approximation of its Krylov basis.

    After j products ``X Q_{<=j} = Q_{<=j+1} Tt`` with ``Tt`` ((j+1)b x jb) made of the
    projection coefficients. The Nystrom approximation with the sketch ``Q_{<=j}`` is
    ``Y (Q^T Y)^+ Y^T`` for ``Y = X Q_{<=j} = Q_{<=j+1} Tt``: with the stabilising shift ``nu``
    of Tropp et al. (2017, Alg. 3), ``F = (Tt + nu E) (T + nu I)^{-1/2}`` is small, and the
    eigenpairs are ``(s^2 - nu, Q_{<=j+1} u)`` for the SVD ``F = u s w^T``. Its residuals
    ``|X z - lambda z|`` come from the next product's coefficients, as in :func:`svd`.

    Returns the result and the core ``G^T X G`` of the Gaussian start block ``G`` (for the
    symmetry test; None when ``b < 2``).
    """
    d = op.shape[0]
    cxp = be.cxp
    floor = FLOOR * math.sqrt(d) * be.eps
    G = be.normal(rng, (d, b))
    Qlast = Qb = _linalg.orthonormalize(G, be, passes=2)
    cols: list[Any] = []  # block column j of Tt = Q^T X Q from the product X Q_j
    sketch = None
    products = 0
    extraction = None
    residuals = None
    converged = False
    done = 0
    for j in range(steps + (1 if want_residuals else 0)):
        Y = be.persist(op.symmetric_matmat(Qlast))
        products += b
        if j == 0 and b >= 2:
            # G^T X G = (G^T Y) (Q_1^T G): reigh's symmetry test, from the first product.
            be.prefetch(G.T @ Y, Qlast.T @ G)
            sketch = (G.T @ Y, Qlast.T @ G)
        ext = extend(Y, Qb, be, rng)
        cols.append(cxp.concat([ext.coef, ext.R], axis=0))
        Qb = be.persist(be.join_columns([Qb, ext.P]))
        Qlast = ext.P
        if extraction is not None and (tol is not None or j == steps):
            residuals = _nystrom_residuals(cols, extraction, rank, b, be)
            if tol is not None and bool(cxp.all(residuals <= _limits(extraction[1][:rank], tol, floor, be))):
                converged = True
                break
        if j == steps:
            break
        done = j + 1
        residuals = None
        if (j + 1) * b >= rank and (tol is not None or j + 1 == steps):
            extraction = _nystrom_core(cols, b, d, be)
    z, lam = extraction
    keep = min(rank, z.shape[1])
    U = be.matmul(Qb[:, : (done + 1) * b], be.from_core(z[:, :keep]))
    if sketch is not None:
        a, c = be.to_core(*sketch)
        sketch = a @ c
    return KrylovResult(
        U, lam[:keep], None, residuals, done, b, products, converged if tol is not None else None
    ), sketch


def _tt(cols: list[Any], j: int, b: int, be: _backend.Backend) -> Any:
    """``Tt`` of the first ``j`` products: ((j+1)b x jb)."""
    rows = (j + 1) * b
    return be.cxp.concat([_pad_rows(c, rows, be) for c in cols[:j]], axis=1)


def _nystrom_core(cols: list[Any], b: int, d: int, be: _backend.Backend) -> tuple[Any, Any]:
    """Eigenpairs (coefficients in Q_{<=j+1}, eigenvalues) of the Nystrom approximation."""
    cxp = be.cxp
    j = len(cols)
    K = j * b
    Tt = _tt(cols, j, b, be)
    # |Y|_F = |Tt|_F (Q orthonormal): the shift of Tropp et al. (2017, Alg. 3).
    nu = math.sqrt(d) * be.eps * float(cxp.linalg.vector_norm(Tt))
    shift = nu * _pad_rows(be.eye(K), K + b, be)
    beta, V = _linalg.small_eigh(_linalg.symmetrize(Tt[:K, :]) + nu * be.eye(K), cxp)
    keep = be.count(beta > 0.0)
    F = (Tt + shift) @ (V[:, :keep] / cxp.sqrt(beta[:keep])[None, :])
    u, s, _ = _linalg.small_svd(F, cxp)
    return u, cxp.clip(s * s - nu, min=0.0)


def _nystrom_residuals(cols: list[Any], extraction: tuple, rank: int, b: int, be: _backend.Backend) -> Any:
    """``|X q_i - lambda_i q_i|`` for the Nystrom pairs of the previous step, with
    ``q = Q_{<=j} z`` and ``X Q_{<=j} = Q_{<=j+1} Tt``."""
    cxp = be.cxp
    z, lam = extraction
    keep = min(rank, z.shape[1])
    j = len(cols)
    Tt = _tt(cols, j, b, be)
    z = z[:, :keep]
    r = Tt @ z - _pad_rows(z * lam[None, :keep], (j + 1) * b, be)
    out = cxp.linalg.vector_norm(r, axis=0)
    if keep < rank:
        out = cxp.concat([out, be.zeros((rank - keep,))])
    return out
