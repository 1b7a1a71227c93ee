"""A small streaming PCA on Dask arrays held by a local two-process cluster."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..brand import eigh_update
from ._report import Section, faster_or_slower, progress


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


def section(quick: bool) -> Section:
    """Streaming PCA of a d x (T n) matrix on Dask against its exact SVD and one NumPy process."""
    import dask
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    d, n, rank, steps, rows = (20_000, 16, 16, 8, 5_000) if quick else (100_000, 32, 32, 10, 25_000)
    rng = np.random.default_rng(0)
    loadings = rng.standard_normal((d, 8)) * 0.7 ** np.arange(8)
    batches = [loadings @ rng.standard_normal((8, n)) + 0.05 * rng.standard_normal((d, n)) for _ in range(steps)]
    # dashboard_address=":0": no dashboard on the default port, which another cluster may hold
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        L, Q = None, None
        times = []
        for k, A in enumerate(progress(batches, "updates on the cluster")):
            A = _scattered(client, A, rows, f"batch-{k}")  # the data, already on the workers
            t0 = time.perf_counter()
            if Q is None:
                L, Q = eigh_update(da.zeros((0,), chunks=-1), da.zeros((d, 0), chunks=(A.chunks[0], 0)), A, rank=rank)
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
    t_dask = float(np.median(times))
    s = np.linalg.svd(np.hstack(batches), compute_uv=False)
    out = Section("dask", f"Streaming PCA on Dask: d={d:,}, {steps} batches of {n}, rank {rank}, a LocalCluster of 2 "
                          f"worker processes, tall arrays in blocks of {rows:,} rows:")
    out.line(f"{t_dask * 1e3:.0f} ms per update (median), one NumPy process {t_numpy * 1e3:.0f} ms: the cluster was "
             f"{faster_or_slower(t_dask, t_numpy)} than NumPy at this size")
    out.line(f"held basis: {blocks} blocks on the workers, a graph of {graph} keys; the scheduler holds {records} "
             f"task records after {steps} updates")
    out.check("top-8 eigenvalues against the exact SVD of the concatenated data: max relative error",
              np.max(np.abs(lam[:8] - s[:8] ** 2) / s[:8] ** 2), 1e-5)
    out.check("same stream in one NumPy process: max |Q_dask - Q_numpy|", np.abs(V - ref_Q).max(), 1e-8)
    # every update persists its result and drops the lineage: the held basis is its blocks alone
    out.check("keys in the held basis's graph beyond its blocks (lineage)", graph - blocks, 0)
    return out
