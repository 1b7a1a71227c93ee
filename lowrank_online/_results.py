"""Named results mirroring the array API's ``linalg.svd`` / ``linalg.eigh`` results."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["EighResult", "SVDResult"]


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
