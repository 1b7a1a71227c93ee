"""Track a streaming covariance with LowRankEMA and compare it with the exact average.

Batches of ``n`` samples from a d-dimensional Gaussian with a power-law covariance spectrum
arrive one at a time. The tracker holds ``M_k = rho M_{k-1} + (1 - rho) A_k A_k^T`` (with
``A_k = X_k / sqrt(n)``) as a rank-(r + n) eigendecomposition, updated in O(d (r + n)^2). The
exact average is kept densely next to it (O(d^2) per step, which is what the tracker avoids) to
print:

* the relative Frobenius error of the tracked matrix, against the best any rank-(r + n)
  representation could do (the truncated EVD of the exact average; Prop. 3.1 of paper 001);
* the same with an RSVD refresh every ``--refresh`` steps (B-R-KFAC, Alg. 5);
* the relative error of the top eigenvalues, and the time per update.

Run ``python examples/streaming_covariance.py`` (about 10 s on 2 cores), or
``--backend torch`` to run the tracker on PyTorch tensors, with ``--threads N`` to size the
thread pools.

Thread pools. The updates here are small (tall-skinny products with ``r + n = 46`` columns); one
thread runs them as fast as two, and a second thread only pays off when the cores are free. In
one process NumPy's OpenBLAS pool and PyTorch's OpenMP pool busy-wait for work after each call,
so with both at two threads on two cores they take the cores from each other: measured on the
2-core test machine under load, an update took 60-68 ms on PyTorch and 24 ms on NumPy with two
threads per pool, and 1.25 ms and 0.98 ms with one. The dense reference below (NumPy) therefore
runs with a single BLAS thread when the tracker runs on PyTorch, and ``--threads`` sets the
tracker's pool: 1 by default, as these sizes need no more (``--threads 0`` keeps the
libraries' own defaults).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowrank_online import LowRankEMA
from lowrank_online._threads import limit_threads


def _numpy_blas_limit(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


def _namespace(name: str):
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "torch":
        import array_api_compat.torch as xp
    else:
        raise SystemExit(f"unknown backend {name!r}")
    return xp


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1500)
    parser.add_argument("--rank", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--decay", type=float, default=0.95)
    parser.add_argument("--refresh", type=int, default=50, help="RSVD overwrite period of the second tracker")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of the tracker's pool (0: the library's default)")
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    if args.backend == "torch":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        # the (untimed) NumPy reference must not keep the cores spinning between torch calls
        reference_pool = _numpy_blas_limit(1)
    else:
        reference_pool = None

    xp = _namespace(args.backend)
    rng = np.random.default_rng(args.seed)
    d, r, n, rho = args.dim, args.rank, args.batch, args.decay
    # covariance with a power-law spectrum lambda_i ~ i^-1.5 in a random basis
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    root = basis * (np.arange(1, d + 1) ** -0.75)

    pure = LowRankEMA(rank=r, decay=rho)
    refreshed = LowRankEMA(rank=r, decay=rho)
    exact = np.zeros((d, d))
    spent = 0.0
    print(f"d = {d}, rank = {r}, batch = {n}, decay = {rho}, backend = {args.backend}, "
          f"threads = {args.threads or 'default'}{' (NumPy reference: 1)' if reference_pool is not None else ''}")
    print(f"{'step':>5} {'B-update err':>13} {'+refresh err':>13} {'best r+n err':>13} "
          f"{'top-5 eig err':>14} {'ms/update':>10}")
    for k in range(args.steps):
        X = root @ rng.standard_normal((d, n))
        A = X / np.sqrt(n)
        exact = A @ A.T if k == 0 else rho * exact + (1 - rho) * A @ A.T
        batch = xp.asarray(A)
        t0 = time.perf_counter()
        pure.update(batch)
        spent += time.perf_counter() - t0
        if k and k % args.refresh == 0:
            refreshed.refresh(xp.asarray(exact), seed=k)
        refreshed.update(batch)
        if (k + 1) % (args.steps // 6) == 0 or k == args.steps - 1:
            w, V = np.linalg.eigh(exact)
            w, V = w[::-1], V[:, ::-1]
            norm = np.linalg.norm(exact)
            best = np.sqrt(np.sum(w[r + n :] ** 2)) / norm

            def err(tracker, exact=exact, norm=norm):
                Q, L = _to_numpy(tracker.eigenvectors), _to_numpy(tracker.eigenvalues)
                return np.linalg.norm(exact - (Q * L) @ Q.T) / norm

            top = np.max(np.abs(_to_numpy(pure.eigenvalues)[:5] - w[:5]) / w[:5])
            print(
                f"{k + 1:>5} {err(pure):>13.3e} {err(refreshed):>13.3e} {best:>13.3e} "
                f"{top:>14.3e} {1e3 * spent / (k + 1):>10.2f}"
            )


if __name__ == "__main__":
    main()
