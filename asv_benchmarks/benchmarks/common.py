"""Shared problem builders and measurement helpers for the asv suite.

The timer, the GEMM rate and the flop models are the repository's one copy,
``benchmarks/_measure.py`` (not installed). asv imports this folder as the package
``benchmarks``, which shadows the repository's top-level ``benchmarks/`` folder, so that folder
is put on ``sys.path`` and its modules are imported by bare name (``_measure``, ``bench_dask``),
as its own scripts import them.
"""

import math
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import _measure

# The cases that take minutes per call (Dask at 2,000,000 rows, the dense K-FAC eigendecomposition
# at 4097) run only with LOWRANK_ASV_LARGE=1, so that the default `asv run --quick` stays within
# a few minutes on 2 cores (asv_benchmarks/README.md).
LARGE = os.environ.get("LOWRANK_ASV_LARGE") == "1"

# The paper's sizes (001, Sec. 6): target rank 220, batch 256.
RANK, BATCH = 220, 256


def b_update_problem(d, r=RANK, n=BATCH, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, r)))
    L = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    A = rng.standard_normal((d, n)) / math.sqrt(n)
    return L.astype(dtype), Q.astype(dtype), A.astype(dtype)


def psd_matrix(d, k=RANK + BATCH, dtype=np.float64, seed=0):
    """An exponentially-averaged-looking PSD matrix: decaying spectrum plus a small floor."""
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((d, k)) * (0.98 ** np.arange(k))
    return (B @ B.T / k + 1e-4 * np.eye(d)).astype(dtype)


best_time = _measure.best_time

_GEMM = {}


def gemm_rate(dtype=np.float64, n=2048):
    """:func:`_measure.gemm_rate` (square n x n, best of 5), measured once per process and dtype."""
    key = np.dtype(dtype).name
    if key not in _GEMM:
        _GEMM[key] = _measure.gemm_rate(n, 5, dtype)
    return _GEMM[key]
