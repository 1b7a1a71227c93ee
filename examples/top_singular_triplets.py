"""Top singular triplets of a dense matrix with lanczos_svd, single vectors against blocks.

A ``n x n`` matrix with singular values ``max(0.95^j, 1e-4)`` is built from random orthogonal
factors; :func:`lowrank_online.lanczos_svd` finds its top ``k`` triplets to relative residual
``--tol``, once with single vectors (``block_size=1``, one matrix-vector product per half
step) and once with its default on arrays (blocks of 8: more products, fewer steps, each block
product reading the matrix once). Printed for each: time, steps, products, the largest
relative error of the values against NumPy's dense SVD and the largest true residual
``|A^T u_i - s_i v_i| / s_i``; SciPy's ``svds(solver="propack")`` runs beside them when SciPy is
installed.

Run ``python examples/top_singular_triplets.py`` (``--n 4000`` for the size of the peers page's
PROPACK benchmark, where the blocks take about 0.75x PROPACK's time with one BLAS thread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowrank_online import lanczos_svd


def matrix(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = np.maximum(0.95 ** np.arange(n), 1e-4)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * s) @ V.T, s


def report(name: str, seconds: float, U, S, Vh, A, s, steps: str, products: str) -> str:
    k = S.shape[0]
    value_err = float(np.max(np.abs(S - s[:k]) / s[:k]))
    residual = float(np.max(np.linalg.norm(A.T @ U - Vh.T * S, axis=0) / S))
    return (f"{name:<28s} {1e3 * seconds:9.1f} ms  steps {steps:>4s}  products {products:>4s}  "
            f"value err {value_err:.1e}  residual {residual:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args(argv)
    A, s = matrix(args.n)
    print(f"top {args.k} triplets of a {args.n} x {args.n} matrix, tol {args.tol:g}")
    for name, block in (("lanczos_svd, single vectors", 1), ("lanczos_svd, blocks of 8", None)):
        lanczos_svd(A, args.k, tol=args.tol, block_size=block)  # warm-up
        t0 = time.perf_counter()
        res = lanczos_svd(A, args.k, tol=args.tol, block_size=block)
        seconds = time.perf_counter() - t0
        print(report(name, seconds, res.U, res.S, res.Vh, A, s, str(res.iterations), str(res.n_products)))
    try:
        from scipy.sparse.linalg import svds
    except ImportError:
        return
    svds(A, args.k, tol=args.tol, solver="propack", rng=0)
    t0 = time.perf_counter()
    U, S, Vh = svds(A, args.k, tol=args.tol, solver="propack", rng=0)
    seconds = time.perf_counter() - t0
    order = np.argsort(S)[::-1]
    print(report("scipy svds (PROPACK)", seconds, U[:, order], S[order], Vh[order], A, s, "-", "-"))


if __name__ == "__main__":
    main()
