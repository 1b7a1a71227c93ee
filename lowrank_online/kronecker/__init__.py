"""Kronecker-product toolkit for Fisher blocks of fully-connected layers (papers 002-004).

* :func:`kron_rearrange`, :func:`nearest_kron` -- Van Loan's rearrangement and the dense
  nearest Kronecker sum (paper 002, Thm 3.1);
* :class:`FisherBlockOperator` -- products with the rearranged Fisher block from per-sample
  statistics, never forming it (Prop. 3.1);
* :func:`power_svd`, :func:`lanczos_svd` -- leading singular triplets from products
  (App. B.1, Sec. 3.2.2 / App. B.2);
* :func:`kpsvd`, :func:`kfac_corrected`, :func:`kfac_factors` and the :class:`KronSum`
  container (Sec. 3.1-3.3);
* :class:`KronSumInverse` -- ``(A ⊗ B + C ⊗ D)^{-1}`` by the generalised eigenproblem (Sec. 3.4);
* :func:`tkfac_factors` -- trace-restricted factors (paper 003, eq. (4.9), (5.15), (5.16));
* :func:`ekfac_factors`, :func:`ekfac_scalings`, :func:`ekfac_update`, :func:`ekfac_solve` --
  the eigenvalue-corrected K-FAC of paper 004.

Convention: row-major flattening, ``F = E[(g g^T) ⊗ (a a^T)]`` for a weight of shape
``d_g x d_a`` (see ``docs/conventions.rst``).
"""

from .ekfac import EKFACFactors, ekfac_factors, ekfac_scalings, ekfac_solve, ekfac_update
from .fisher import FisherBlockOperator
from .kpsvd import kfac_corrected, kfac_factors, kpsvd
from .kronsum import KronSum, KronSumInverse
from .lanczos import IterativeSVDResult, lanczos_svd, power_svd
from .rearrange import kron_rearrange, nearest_kron
from .tkfac import TKFACFactors, tkfac_factors

__all__ = [
    "EKFACFactors",
    "FisherBlockOperator",
    "IterativeSVDResult",
    "KronSum",
    "KronSumInverse",
    "TKFACFactors",
    "ekfac_factors",
    "ekfac_scalings",
    "ekfac_solve",
    "ekfac_update",
    "kfac_corrected",
    "kfac_factors",
    "kpsvd",
    "kron_rearrange",
    "lanczos_svd",
    "nearest_kron",
    "power_svd",
    "tkfac_factors",
]
