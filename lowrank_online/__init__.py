"""lowrank_online: streaming / online low-rank factorizations on any array-API backend.

Core (paper 001, Puiu "Brand New K-FACs"):

* :func:`svd_update`, :func:`eigh_update` -- Brand's thin-SVD update and its symmetric variant;
* :func:`rsvd`, :func:`reigh` -- randomized SVD and symmetric (Nystrom) randomized EVD, by block
  Krylov (default) or subspace iteration, with an a-posteriori error estimate and ``tol``;
* :func:`damped_solve` -- ``(Q L Q^T + lambda I)^{-1} X`` in time linear in the dimension;
* :class:`NystromSketch` -- single-pass Nystrom sketch of a stream of Gram matrices;
* :class:`LowRankEMA` -- exponential-average tracker with B-updates, RSVD refresh and light
  correction;
* :func:`save_state` / :func:`load_state` -- npz checkpoints without pickle.

Built on the core:

* :class:`StreamingPCA` -- scikit-learn's ``IncrementalPCA`` estimator by Brand updates, with
  optional forgetting, on every backend and on Dask (imported on first use, so that
  ``import lowrank_online`` does not import scikit-learn).
"""

from . import kronecker as _kronecker
from ._linalg import DecompositionError
from ._results import EighResult, ErrorEstimate, REighResult, RSVDResult, SVDResult
from .brand import eigh_update, svd_update
from .checkpoint import load_state, save_state
from .ema import LowRankEMA
from .kronecker import *  # noqa: F403 - the toolkit's public names, listed once in kronecker.__all__
from .operators import LinearOperator
from .randomized import reigh, rsvd
from .sketch import NystromSketch
from .solve import damped_solve

__version__ = "0.1.0"


def __getattr__(name: str):
    # StreamingPCA subclasses scikit-learn's BaseEstimator when scikit-learn is installed;
    # importing sklearn.base is slow (most of the package's import time), so the module loads on first access only.
    if name == "StreamingPCA":
        from .pca import StreamingPCA

        return StreamingPCA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DecompositionError",
    "EighResult",
    "ErrorEstimate",
    "LinearOperator",
    "LowRankEMA",
    "NystromSketch",
    "REighResult",
    "RSVDResult",
    "SVDResult",
    "StreamingPCA",  # noqa: F405 - loaded on first access (__getattr__ above)
    "damped_solve",
    "eigh_update",
    "load_state",
    "reigh",
    "rsvd",
    "save_state",
    "svd_update",
    *_kronecker.__all__,
]
