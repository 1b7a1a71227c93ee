"""The one measurement module: timer, GEMM rate, fitted exponent, and one flop model per algorithm.

Used by the ratio tables in this folder (``bench.py``, ``bench_dask.py``), the asv suite
(``asv_benchmarks/benchmarks/common.py``) and the evidence scripts. This folder is not installed
and is not a package: its scripts import this module by bare name (``import _measure``), which
works when they run as ``python benchmarks/bench.py`` (the folder is then ``sys.path[0]``); the
asv suite, the evidence scripts and the examples put ``benchmarks/`` on ``sys.path`` first, and
from the repository root it is also ``benchmarks._measure``. It needs NumPy only.

Flop models
-----------
One flop is one addition or one multiplication; a multiply-add is two. A general product of a
``p x q`` with a ``q x s`` matrix costs ``2 p q s``; a Gram matrix ``W^T W`` of a ``d x n``
block is symmetric, ``n (n + 1) / 2`` entries of ``d`` multiply-adds: ``d n (n + 1)`` (NumPy
runs ``W.T @ W`` and ``A @ A.T`` as BLAS SYRK, which computes exactly that half; a backend that
runs it as a full GEMM does ``2 d n^2``). Each model counts the products over the tall
dimension ``d`` (or with the matrix ``X``) that the algorithm runs on its common path, the work
that grows with the problem and runs at GEMM speed. Left out, and said so in each model: the
elementwise passes (subtractions, scalings, the sign convention: ``O(d (n + m))``, under 0.5%
at the paper's sizes) and the small cores (``O((r + n)^3)``, independent of ``d``).
``tests/scripts/test_bench_scripts.py`` checks every model against the products the library
actually executes, counted operand by operand.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "DENSE_FRACTION",
    "best_time",
    "block_krylov_reigh_flops",
    "block_krylov_rsvd_flops",
    "damped_solve_flops",
    "eigh_update_flops",
    "fisher_product_flops",
    "fitted_exponent",
    "gemm_rate",
    "median_time",
    "reigh_flops",
    "rsvd_flops",
    "scheduler_spans",
    "scheduler_tasks",
    "svd_compressed_flops",
    "svd_update_flops",
    "timings",
    "worker_memory",
]

# The library's switch to the dense form of eigh_update (lowrank_online.brand.DENSE_FRACTION):
# r + n >= DENSE_FRACTION * d. Repeated rather than imported so that the models need no import
# of the library; tests/scripts/test_bench_scripts.py checks that the two agree.
DENSE_FRACTION = 0.75


# --------------------------------------------------------------------------------------------
# timer
# --------------------------------------------------------------------------------------------
def timings(fn: Callable[[], Any], repeat: int = 3, *, warmup: bool = True, budget: float = math.inf) -> list[float]:
    """Wall times of up to ``repeat`` calls of ``fn``.

    One untimed warm-up call comes first unless ``warmup=False`` (imports, caches, first touch
    of the memory); after ``budget`` seconds no further call starts (at least one always runs).
    """
    if warmup:
        fn()
    out: list[float] = []
    start = time.perf_counter()
    for i in range(repeat):
        if i and time.perf_counter() - start > budget:
            break
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def best_time(fn: Callable[[], Any], repeat: int = 3, *, warmup: bool = True, budget: float = math.inf) -> float:
    """Best of :func:`timings`: the figure least disturbed by other work on the machine."""
    return min(timings(fn, repeat, warmup=warmup, budget=budget))


def median_time(fn: Callable[[], Any], repeat: int = 5, *, warmup: bool = True, budget: float = math.inf) -> float:
    """Median of :func:`timings`: what a user sees on a typical call."""
    return statistics.median(timings(fn, repeat, warmup=warmup, budget=budget))


def gemm_rate(n: int = 4096, repeat: int = 5, dtype: Any = np.float64) -> float:
    """Measured GEMM rate in flop/s: best of ``repeat`` square ``n x n`` products (``2 n^3`` flops).

    Not cached: callers measure it under different thread limits.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    return 2.0 * n**3 / best_time(lambda: a @ b, repeat)


def fitted_exponent(ds: list[int] | list[float], ts: list[float]) -> float:
    """Least-squares slope ``p`` of ``log t`` against ``log d`` (``t ~ d^p``)."""
    x, y = np.log(np.asarray(ds, float)), np.log(np.asarray(ts, float))
    return float(np.polyfit(x, y, 1)[0])


# --------------------------------------------------------------------------------------------
# flop models
# --------------------------------------------------------------------------------------------
def eigh_update_flops(d: int, r: int, n: int, *, m: int | None = None, reproject: bool = False) -> float:
    """Flops of one ``eigh_update`` (the B-update) of a rank-``r`` representation with ``n`` columns.

    Brand's path (``r + n < 3d/4``), from ``lowrank_online._linalg.complement`` and
    ``brand._brand_eigh_update`` on the well-conditioned common case:

    ============================ =============================== ======================
    step                         product                         flops
    ============================ =============================== ======================
    projection                   ``C = Q^T A`` (r x d, d x n)    ``2 d r n``
    residual                     ``W = A - Q C`` (d x r, r x n)  ``2 d r n``
    Gram matrix of the residual  ``W^T W`` (symmetric, n x n)    ``d n (n + 1)``
    DGKS re-projection (rare)    ``Q^T W`` (r x d, d x n)        ``2 d r n``
    new basis                    ``[Q W] Z`` (d x (r+n), .. x m) ``2 d (r + n) m``
    ============================ =============================== ======================

    so ``4 d r n + d n (n + 1) + 2 d (r + n) m``, ``m`` the output columns (``r + n`` without
    ``rank``). The re-projection runs only when a column of A lost more than half its norm to
    ``span(Q)`` (A mostly in the held span, the K-factor regime): ``reproject=True`` adds it.
    Not counted: the subtraction in the residual and the sign convention (``d n + 3 d m``), and
    the float64 core (``O((r + n)^3)``: the eigendecompositions of the ``n x n`` Gram matrix and
    of the ``(r + n)`` core).

    At r = 220, n = 256 (the paper's sizes), m = r + n: 744,224 d flops (856,864 d with the
    re-projection). The three models this one replaces gave 940,576 d
    (``4drn + 4dn^2 + 2d(r+n)^2``, bench.py), 809,504 d (``4drn + 2dn^2 + 2d(r+n)^2``, the Gram
    matrix as a full GEMM, bench_dask.py) and 922,144 d (``6drn + 2dn^2 + 2d(r+n)m``, the
    re-projection always and the full GEMM, the docstring).

    Wide path (``r + n >= 3d/4``, ``brand._dense_eigh_update``): the d x d Gram matrix
    ``A A^T`` and the held part ``B B^T`` with ``B = Q L^1/2`` (d x r), both symmetric:
    ``d (d + 1) (n + r)``, plus the ``d x d`` eigendecomposition (``O(d^3)``, not counted).
    """
    if min(d, r, n) < 0:
        raise ValueError(f"sizes must be non-negative, got d = {d}, r = {r}, n = {n}")
    if r + n >= DENSE_FRACTION * d:
        return float(d * (d + 1) * (n + r))
    m = r + n if m is None else m
    return float(2 * d * r * n * (3 if reproject else 2) + d * n * (n + 1) + 2 * d * (r + n) * m)


def svd_update_flops(m: int, d: int, r: int, n: int, *, p: int | None = None) -> float:
    """Flops of one ``svd_update`` of an ``m x d`` rank-``r`` SVD with the increment ``A B^T``
    (A: m x n, B: d x n).

    Two complements as in :func:`eigh_update_flops` (A against U over m rows, B against V over
    d rows), then the two rotations ``[U W_A] Z_A`` and ``Z_B^T [V W_B]^T`` to ``p`` columns
    (``r + n`` without ``rank``): ``(m + d) (4 r n + n (n + 1) + 2 (r + n) p)``. Not counted, as
    there: the elementwise passes and the ``O((r + n)^3)`` core SVD.
    """
    p = r + n if p is None else p
    return float((m + d) * (4 * r * n + n * (n + 1) + 2 * (r + n) * p))


def rsvd_flops(m: int, n: int, k: int, n_iter: int) -> float:
    """Flops of ``rsvd(X, ..., method="subspace")`` in its products with a dense m x n X.

    ``k = rank + oversample`` columns: the range product, ``n_iter`` pairs of products with
    ``X^T`` and ``X``, and ``X^T Q`` for the small factor, ``2 n_iter + 2`` products of
    ``2 m n k`` flops: ``(4 n_iter + 4) m n k``. Not counted: the orthonormalisations and the
    small SVD, ``O((m + n) k^2)``.
    """
    return float((4 * n_iter + 4) * m * n * k)


def block_krylov_rsvd_flops(m: int, n: int, steps: int, block: int) -> float:
    """Flops of ``rsvd(X, ..., method="block_krylov")`` in its products with a dense m x n X.

    ``steps`` block steps (``lowrank_online.randomized._krylov_steps``: ``n_iter + 1``, or by
    default the products of subspace iteration with n_iter = 2) of one product with X and one
    with X^T, ``block`` columns each: ``4 steps block m n``. The error estimate adds one product
    with X (``2 block m n``). Not counted: the re-orthogonalisation, ``O((m + n) (steps block)^2)``.
    """
    return float(4 * steps * block * m * n)


def reigh_flops(d: int, k: int, n_iter: int) -> float:
    """Flops of ``reigh(X, ..., method="subspace")`` in its products with a dense d x d X:
    ``n_iter + 1`` products with ``k`` columns (the Nystrom route needs no transposed
    products), ``2 (n_iter + 1) d^2 k``. Not counted: ``O(d k^2)`` of orthonormalisation."""
    return float(2 * (n_iter + 1) * d * d * k)


def block_krylov_reigh_flops(d: int, steps: int, block: int) -> float:
    """Flops of ``reigh(X, ..., method="block_krylov")`` in its products with a dense d x d X:
    ``steps`` products with ``block`` columns (block Lanczos), ``2 steps block d^2``. The error
    estimate adds one more. Not counted: ``O(d (steps block)^2)`` of re-orthogonalisation."""
    return float(2 * steps * block * d * d)


def damped_solve_flops(d: int, r: int, k: int) -> float:
    """Flops of ``damped_solve`` with a rank-``r`` representation and ``k`` right-hand sides:
    ``Q^T X`` and ``Q (c Q^T X)``, ``4 d r k``; the ``O(d k)`` scaling and sum not counted."""
    return float(4 * d * r * k)


def fisher_product_flops(N: int, d_a: int, d_g: int, k: int = 1) -> float:
    """Flops of one ``FisherBlockOperator.matmat`` with ``k`` vectors from ``N`` samples: the two
    GEMMs ``rowsum(a o (a V))`` and ``g^T diag(c) g``, ``2 N k (d_a^2 + d_g^2)``."""
    return float(2 * N * k * (d_a * d_a + d_g * d_g))


def svd_compressed_flops(d: int, cols: int, k: int, n_power_iter: int) -> float:
    """The peer's model: ``dask.array.linalg.svd_compressed`` of a d x ``cols`` matrix with
    ``k`` columns (rank plus oversamples): ``2 q + 2`` products with X of ``2 d cols k`` flops
    each, plus the tall-skinny QR of a d x k block (``4 d k^2``)."""
    return float((2 * n_power_iter + 2) * 2 * d * cols * k + 4 * d * k * k)


# --------------------------------------------------------------------------------------------
# probes of a dask.distributed cluster (run through client.run / client.run_on_scheduler)
# --------------------------------------------------------------------------------------------
def scheduler_tasks(dask_scheduler: Any) -> int:
    """Task records the scheduler holds."""
    return len(dask_scheduler.tasks)


def scheduler_spans(dask_scheduler: Any) -> int:
    """Spans the scheduler keeps (one per computation)."""
    spans = dask_scheduler.extensions.get("spans")
    return len(getattr(spans, "spans", ()))


def worker_memory(dask_worker: Any) -> dict[str, int]:
    """Keys held, managed bytes, resident set and cumulative performance-metric entries of a worker."""
    import psutil  # a dependency of distributed, present wherever a worker runs

    managed = sum(dask_worker.data.fast.weights.values()) if hasattr(dask_worker.data, "fast") else 0
    metrics = len(getattr(dask_worker, "digests_total", ())) + len(getattr(dask_worker, "digests_max", ()))
    return {"keys": len(dask_worker.data), "managed": managed, "rss": psutil.Process().memory_info().rss,
            "metrics": metrics}
