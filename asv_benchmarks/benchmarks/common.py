"""Shared problem builders and measurement helpers for the asv suite."""

import math
import os

import numpy as np

from lowrank_online._timing import timed

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


def best_time(fn, repeat=3):
    """Best of ``repeat`` calls after a warm-up (the library's timer, as its bench script uses)."""
    return timed(fn, repeat)[0]


_GEMM = {}


def gemm_rate(dtype=np.float64, n=2048):
    """The machine's measured GEMM rate (flop/s), cached per process."""
    key = np.dtype(dtype).name
    if key not in _GEMM:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        _GEMM[key] = 2.0 * n**3 / best_time(lambda: a @ b, 5)
    return _GEMM[key]
