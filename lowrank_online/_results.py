"""Named results mirroring the array API's ``linalg.svd`` / ``linalg.eigh`` results."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["EighResult", "ErrorEstimate", "REighResult", "RSVDResult", "SVDResult"]


class SVDResult(NamedTuple):
    """Thin SVD ``U @ diag(S) @ Vh``; singular values descending.

    Same field names as the array API's ``linalg.svd`` result.
    """

    U: Any
    S: Any
    Vh: Any


class EighResult(NamedTuple):
    """Eigendecomposition ``eigenvectors @ diag(eigenvalues) @ eigenvectors.T``.

    Same field names as the array API's ``linalg.eigh`` result, but eigenvalues are
    **descending** (largest first), the order a truncated decomposition is used in.
    """

    eigenvalues: Any
    eigenvectors: Any


class ErrorEstimate(NamedTuple):
    """A-posteriori accuracy of a randomized decomposition (see :func:`~lowrank_online.rsvd`).

    Computed from the products the method made anyway plus a few more; never from the
    unknown exact decomposition.
    """

    residuals: Any
    """(rank,) residual norms ``|X v_i - s_i u_i|`` of the returned triplets (``rsvd``, whose
    triplets satisfy ``X^T u_i = s_i v_i`` to rounding) or ``|X v_i - lambda_i v_i|`` of the
    returned eigenpairs (``reigh``), in the result's namespace and dtype. There is a singular
    value (eigenvalue) of X within ``residuals[i]`` of ``S[i]``, and within
    ``residuals[i]**2 / gap_i`` when it is separated from the rest of the spectrum by
    ``gap_i``."""
    frobenius: float
    """Randomized estimate of ``|X - X_hat|_F`` for the returned rank-``rank`` approximation
    ``X_hat``, from ``probes`` Gaussian vectors (``E[|E g|^2] = |E|_F^2``); exact on the dense
    path."""
    probes: int
    """Number of Gaussian vectors behind ``frobenius`` (0 on the dense path)."""
    n_products: int
    """Matrix-vector products the call made, the estimate's included (a product with a
    k-column block counts k; products with X and with X^T alike)."""
    iterations: int
    """Power iterations (``method="subspace"``) or block Krylov steps (``"block_krylov"``:
    products with X, each followed in ``rsvd`` by one with X^T)."""
    converged: bool | None
    """Whether every relative residual met ``tol``; None when no ``tol`` was given."""


class RSVDResult(SVDResult):
    """:class:`SVDResult` of :func:`~lowrank_online.rsvd`: unpacks to ``U, S, Vh`` like every
    SVD result, with the :class:`ErrorEstimate` as the attribute ``error`` (None unless
    ``tol`` or ``estimate_error=True`` was given).

    The estimate is an attribute, not a fourth field, so that ``U, S, Vh = rsvd(...)``,
    indexing and ``len`` keep meaning what they mean for :class:`SVDResult`.
    """

    error: ErrorEstimate | None = None

    def __new__(cls, U: Any, S: Any, Vh: Any, error: ErrorEstimate | None = None) -> RSVDResult:
        self = super().__new__(cls, U, S, Vh)
        self.error = error
        return self


class REighResult(EighResult):
    """:class:`EighResult` of :func:`~lowrank_online.reigh`: unpacks to ``eigenvalues,
    eigenvectors``, with the :class:`ErrorEstimate` as the attribute ``error`` (None unless
    ``tol`` or ``estimate_error=True`` was given)."""

    error: ErrorEstimate | None = None

    def __new__(cls, eigenvalues: Any, eigenvectors: Any, error: ErrorEstimate | None = None) -> REighResult:
        self = super().__new__(cls, eigenvalues, eigenvectors)
        self.error = error
        return self
