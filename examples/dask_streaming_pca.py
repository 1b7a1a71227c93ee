"""Streaming PCA of a matrix too tall for one process, on a Dask cluster.

A stream of batches ``A_1, A_2, ...`` of ``--batch`` columns and ``--features`` rows (default
2,000,000 x 64) arrives; the top ``--rank`` (64) eigenpairs of ``sum_i A_i A_i^T`` (the PCA of
the concatenated data) are kept up to date with Brand's update,
``eigh_update(L, Q, A, rank=64)``, one batch at a time. The tall arrays (the basis, the batch,
the residual) live on a ``dask.distributed.LocalCluster`` of 2 worker processes, chunked by
rows, each under a memory limit (default 2 GiB) below what one process needs for the same run.
Only (r + n)-sized cores travel to this process. The batches are generated on the workers,
block by block. The data is a low-rank signal (``--latent`` directions with a decaying
spectrum) plus noise, as sensor or gene-expression data would be.

At the end the same stream is run at ``--check-features`` rows (default 20,000) and compared
with an exact reference: the SVD of the concatenated data computed in one piece with NumPy.
The comparison covers the top eigenvalues and the subspace, and also the same streaming run
in one process with NumPy arrays.

Run ``python examples/dask_streaming_pca.py`` (a few minutes on 2 cores; a progress bar with
tqdm if it is installed), or ``--features 200000 --batches 5`` for a quick look.
"""

from __future__ import annotations

import argparse
import logging
import time
import tracemalloc

import numpy as np


def _batch_block(seed: int, batch: int, latent: int, noise: float, dtype: str, block_info=None) -> np.ndarray:
    """One row block of batch ``batch``, made on the worker that will hold it.

    The rows' loadings on the latent directions depend only on (seed, block): the same for
    every batch. The latent scores (seed, batch) are shared by all blocks; the noise is
    drawn per (seed, batch, block).
    """
    info = block_info[None]
    (start, stop), (_, n) = info["array-location"]
    block = info["chunk-location"][0]
    dt = np.dtype(dtype)
    loadings = np.random.default_rng([seed, 0, block]).standard_normal((stop - start, latent), dtype=dt)
    scores = np.random.default_rng([seed, 1, batch]).standard_normal((latent, n), dtype=dt)
    scores *= (0.8 ** np.arange(latent, dtype=dt))[:, None]
    out = loadings @ scores
    out += noise * np.random.default_rng([seed, 2, batch, block]).standard_normal((stop - start, n), dtype=dt)
    return out


def batch(d: int, rows: int, n: int, k: int, args: argparse.Namespace):
    """Batch ``k`` as a lazy Dask array: one generating task per row block."""
    import dask.array as da

    chunks = (tuple(min(rows, d - s) for s in range(0, d, rows)), (n,))
    return da.map_blocks(
        _batch_block, args.seed, k, args.latent, args.noise, args.dtype,
        chunks=chunks, dtype=args.dtype, meta=np.empty((0, 0), args.dtype),
    )


def stream(d: int, args: argparse.Namespace, *, progress: bool = False) -> tuple[object, object, list[float]]:
    """Run the stream on the cluster; return the held (L, Q) and the time of every update."""
    import dask.array as da

    from lowrank_online import eigh_update

    L = da.zeros((0,), dtype=args.dtype, chunks=-1)
    Q = None
    times = []
    steps = range(args.batches)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = steps = tqdm(steps, unit="batch", desc=f"d={d:,}")
        except ImportError:
            pass
    for k in steps:
        A = batch(d, args.rows, args.batch, k, args)
        t0 = time.perf_counter()
        L, Q = eigh_update(L, A[:, :0] if Q is None else Q, A, rank=args.rank)
        times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.set_postfix(update=f"{times[-1]:.2f}s")
        elif progress:
            print(f"  batch {k + 1}/{args.batches}: update {times[-1]:.2f} s", flush=True)
    return L, Q, times


def _worker_peaks(dask_worker) -> float:
    """Largest resident memory the worker's monitor saw (bytes)."""
    mem = dask_worker.monitor.quantities.get("memory") if hasattr(dask_worker, "monitor") else None
    if mem:
        return float(max(mem))
    import psutil

    return float(psutil.Process().memory_info().rss)


def numpy_stream(d: int, args: argparse.Namespace, blocks: list[np.ndarray]):
    """The same stream in one process with NumPy arrays; also its peak traced memory."""
    from lowrank_online import eigh_update

    L, Q = np.zeros(0, args.dtype), blocks[0][:, :0]
    tracemalloc.start()
    for A in blocks:
        L, Q = eigh_update(L, Q, A, rank=args.rank)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return L, Q, peak + blocks[0].nbytes  # the batch itself was made before tracing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=2_000_000, help="rows d of the tall matrix")
    parser.add_argument("--batch", type=int, default=64, help="columns per batch")
    parser.add_argument("--batches", type=int, default=20, help="number of batches in the stream")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per block of the tall arrays")
    parser.add_argument("--latent", type=int, default=12, help="directions of the signal")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB", help="per worker process")
    parser.add_argument("--check-features", type=int, default=20_000, help="rows of the exactly checked run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import dask
    from dask.distributed import Client, LocalCluster

    d, n, r, T = args.features, args.batch, args.rank, args.batches
    print(f"streaming PCA: d = {d:,} features, {T} batches of {n}, rank {r}, {args.dtype}; "
          f"blocks of {args.rows:,} rows")
    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
        dashboard_address=None, silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        limit = min(client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit).values())
        print(f"LocalCluster: {args.workers} worker processes x 1 thread, memory limit "
              f"{dask.utils.format_bytes(limit)} each")
        t0 = time.perf_counter()
        L, Q, times = stream(d, args, progress=True)
        total = time.perf_counter() - t0
        peaks = client.run(_worker_peaks)
        lam = np.asarray(L.compute())
        print(f"{T} updates in {total:.1f} s: {np.median(times):.2f} s per update (median; first {times[0]:.2f} s); "
              f"the held basis is {len(Q.__dask_graph__())} blocks on the workers")
        print(f"top eigenvalues: {', '.join(f'{v:.4g}' for v in lam[:4])}, ...")
        print("worker peak memory: " + ", ".join(dask.utils.format_bytes(p) for p in peaks.values()))

        # the exact check on a smaller instance (same stream, fewer rows)
        dc = args.check_features
        print(f"\nexact check at d = {dc:,} (same stream, {T} batches):")
        Lc, Qc, _ = stream(dc, args)
        lam, V = (np.asarray(x, float) for x in dask.compute(Lc, Qc))
        blocks = [np.asarray(batch(dc, args.rows, n, k, args).compute()) for k in range(T)]
    Ln, Qn, peak = numpy_stream(dc, args, blocks)
    X = np.hstack(blocks).astype(np.float64)
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    exact = s**2
    k = args.latent
    eig_err = np.max(np.abs(lam[:k] - exact[:k]) / exact[:k])
    sin_theta = np.linalg.norm(V[:, :k] - U[:, :k] @ (U[:, :k].T @ V[:, :k]), 2)
    tail = np.sqrt(np.sum(exact[r:] ** 2) / np.sum(exact**2))
    print(f"  top-{k} eigenvalues: max relative error {eig_err:.1e} against the exact SVD of the "
          f"{dc:,} x {n * T} data")
    print(f"  top-{k} subspace: sin of the largest principal angle {sin_theta:.1e}")
    print(f"  (the spectrum beyond rank {r} holds a fraction {tail:.1e} of the data: what any rank-{r} "
          "PCA leaves out)")
    print(f"  Dask against the same stream in one NumPy process: max |Q_dask - Q_numpy| = "
          f"{np.abs(V - np.asarray(Qn, float)).max():.1e}, eigenvalues {np.max(np.abs(lam - Ln) / Ln[0]):.1e}")
    scaled = peak * d / dc  # every array of the update is d x (something): memory is linear in d
    verdict = "more than" if scaled > limit else "within"
    print(f"  memory: one NumPy process peaks at {peak / 2**20:.0f} MiB here, i.e. about {scaled / 2**30:.2f} GiB "
          f"at d = {d:,}: {verdict} the limit of one worker ({dask.utils.format_bytes(limit)}); the Dask "
          f"workers peaked at {dask.utils.format_bytes(max(peaks.values()))} (resident, Python included)")


if __name__ == "__main__":
    main()
