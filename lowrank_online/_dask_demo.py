"""The main demo's Dask section: a small streaming PCA on a local two-process cluster.

``section(quick)`` returns the section's report. Without Dask (``pip install
"lowrank_online[dask]"``) the module still imports, so that tools which import every module
keep working, but asking it for ``section`` raises ``ImportError`` naming the missing package,
which is how the demo skips an optional section.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

__all__ = ["section"]

try:
    import dask  # noqa: F401
    import dask.array  # noqa: F401
    import distributed  # noqa: F401
except ImportError as _err:  # pragma: no cover - exercised only without the optional extra
    _MISSING: ImportError | None = _err
else:
    _MISSING = None


def __getattr__(name: str) -> Any:  # pragma: no cover - exercised only without the optional extra
    if name == "section" and _MISSING is not None:
        raise ImportError(
            f"the Dask section needs dask[array] and distributed ({_MISSING}); "
            'install them with pip install "lowrank_online[dask]"'
        ) from _MISSING
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scattered(client: Any, A: np.ndarray, rows: int, name: str) -> Any:
    """``A`` on the workers as a Dask array of row blocks, sent once by ``client.scatter``.

    ``da.from_array`` would embed the blocks in every graph that reads them (and Dask warns
    about the size); scattered blocks travel once and the array's graph holds only futures.
    """
    import dask.array as da

    blocks = [A[i : i + rows] for i in range(0, A.shape[0], rows)]
    futures = client.scatter(blocks)
    graph = {(name, i, 0): future for i, future in enumerate(futures)}
    return da.Array(graph, name, chunks=(tuple(b.shape[0] for b in blocks), (A.shape[1],)), dtype=A.dtype)


def _section(quick: bool) -> str:
    """Streaming PCA of a d x (T n) matrix on Dask against its exact SVD and one NumPy process."""
    import array_api_compat.dask.array as dxp  # noqa: F401 - the namespace the arrays resolve to
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    from .brand import eigh_update

    d, n, rank, steps, rows = (20_000, 16, 16, 8, 5_000) if quick else (200_000, 32, 32, 12, 25_000)
    rng = np.random.default_rng(0)
    loadings = rng.standard_normal((d, 8)) * 0.7 ** np.arange(8)
    batches = [loadings @ rng.standard_normal((8, n)) + 0.05 * rng.standard_normal((d, n)) for _ in range(steps)]
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster, Client(cluster) as client:
        L, Q = None, None
        times = []
        for k, A in enumerate(batches):
            A = _scattered(client, A, rows, f"batch-{k}")  # the data, already on the workers
            t0 = time.perf_counter()
            if Q is None:
                L, Q = eigh_update(da.zeros((0,), chunks=-1), A[:, :0], A, rank=rank)
            else:
                L, Q = eigh_update(L, Q, A, rank=rank)
            times.append(time.perf_counter() - t0)
        blocks, graph = Q.numblocks[0], len(Q.__dask_graph__())
        records = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        lam, V = (np.asarray(x) for x in dask.compute(L, Q))
    ref_L, ref_Q = np.zeros(0), np.zeros((d, 0))
    t0 = time.perf_counter()
    for A in batches:
        ref_L, ref_Q = eigh_update(ref_L, ref_Q, A, rank=rank)
    t_numpy = (time.perf_counter() - t0) / steps
    s = np.linalg.svd(np.hstack(batches), compute_uv=False)
    err = np.max(np.abs(lam[:8] - s[:8] ** 2) / s[:8] ** 2)
    return "\n".join(
        [
            f"Streaming PCA on Dask: d={d:,}, {steps} batches of {n}, rank {rank}, a LocalCluster of 2 worker "
            f"processes, tall arrays in blocks of {rows:,} rows:",
            f"  top-8 eigenvalues vs the exact SVD of the concatenated data: max relative error {err:.1e}",
            f"  same stream in one NumPy process: max |Q_dask - Q_numpy| = {np.abs(V - ref_Q).max():.1e}",
            f"  {np.median(times) * 1e3:.0f} ms per update (median; NumPy in-process {t_numpy * 1e3:.0f} ms: at this "
            f"size the cluster's round trips dominate)",
            f"  held basis: {blocks} blocks on the workers, graph of {graph} keys; the scheduler holds "
            f"{records} task records after {steps} updates (no lineage kept)",
        ]
    )


if _MISSING is None:
    section = _section
