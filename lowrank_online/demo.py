"""The main job: a short tour of the library's capabilities on the CPU, printing a report.

``python -m lowrank_online.demo`` runs every section (about a minute on 2 cores, 20 s more
with Dask); ``--quick`` shrinks the sizes (seconds), ``--section NAME`` runs one section. Each section
checks its result against a dense reference and prints the figures it measured. The ``dask``
section (a streaming PCA on a two-process ``LocalCluster``) runs when ``dask[array]`` and
``distributed`` are installed (``pip install "lowrank_online[dask]"``) and is skipped otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable

import numpy as np

from . import LowRankEMA, damped_solve, eigh_update, reigh, rsvd
from ._timing import timed


def online_core(quick: bool) -> str:
    """B-updates of an exponential average against the dense average and numpy's eigh."""
    d, r, n, steps, rho = (600, 20, 8, 40, 0.95) if quick else (3000, 60, 32, 60, 0.95)
    rng = np.random.default_rng(0)
    root = np.linalg.qr(rng.standard_normal((d, 4 * r)))[0] * (0.9 ** np.arange(4 * r))
    tracker = LowRankEMA(rank=r, decay=rho)
    exact = None
    spent = 0.0
    for k in range(steps):
        A = root @ rng.standard_normal((4 * r, n)) + 1e-3 * rng.standard_normal((d, n))
        exact = A @ A.T if exact is None else rho * exact + (1 - rho) * A @ A.T
        t0 = time.perf_counter()
        tracker.update(A)
        spent += time.perf_counter() - t0
    w = np.linalg.eigvalsh(exact)[::-1]
    Q, L = tracker.eigenvectors, tracker.eigenvalues
    err = np.linalg.norm(exact - (Q * L) @ Q.T) / np.linalg.norm(exact)
    best = np.sqrt(np.sum(w[r + n :] ** 2)) / np.linalg.norm(w)
    orth = np.abs(Q.T @ Q - np.eye(Q.shape[1])).max()
    t_eigh, _ = timed(lambda: np.linalg.eigh(exact), 1)
    L0, Q0 = L[:r], Q[:, :r]
    t_upd, res = timed(lambda: eigh_update(L0, Q0, A, decay=rho, weight=1 - rho))
    return "\n".join(
        [
            f"LowRankEMA, d={d}, rank={r}, batch={n}, {steps} B-updates (paper 001, Alg. 4):",
            f"  error vs exact average {err:.2e}  (best any rank-{r + n} representation: {best:.2e})",
            f"  |Q^T Q - I| = {orth:.1e};  top eigenvalue {L[0]:.4f} vs exact {w[0]:.4f}",
            f"  one update {1e3 * t_upd:.1f} ms vs numpy eigh of the average {1e3 * t_eigh:.0f} ms "
            f"({t_eigh / t_upd:.0f}x)",
        ]
    )


def randomized(quick: bool) -> str:
    """rsvd / reigh (block Krylov and subspace iteration) against scikit-learn's randomized_svd,
    each with its smallest n_iter for top-k eigenvalues to 1e-8, and a tol-driven call."""
    d, k = (500, 20) if quick else (2000, 50)
    rng = np.random.default_rng(1)
    B = rng.standard_normal((d, 4 * k)) * (0.95 ** np.arange(4 * k))
    X = B @ B.T
    w = np.linalg.eigvalsh(X)[::-1][:k]
    err = lambda vals: np.max(np.abs(vals - w) / w)  # noqa: E731
    calls = {
        "rsvd, block Krylov": lambda q: rsvd(X, k, n_iter=q, seed=0, estimate_error=True),
        "rsvd, subspace": lambda q: rsvd(X, k, n_iter=q, method="subspace", seed=0, estimate_error=True),
        "reigh, block Krylov": lambda q: reigh(X, k, n_iter=q, seed=0, estimate_error=True),
        "reigh, subspace": lambda q: reigh(X, k, n_iter=q, method="subspace", seed=0, estimate_error=True),
    }
    lines = [f"Randomized decompositions of a {d}x{d} PSD matrix, rank {k}, smallest n_iter for "
             "top-k eigenvalues to 1e-8:"]
    times = {}
    for name, call in calls.items():
        values = (lambda r: r.eigenvalues) if name.startswith("reigh") else (lambda r: r.S)
        q = next((q for q in range(40) if err(values(call(q))) <= 1e-8), 39)
        res = call(q)
        t, _ = timed(lambda c=call, q=q: c(q))
        times[name] = t
        lines.append(f"  {name:20s} n_iter={q:2d} {1e3 * t:7.1f} ms, error {err(values(res)):.1e}, "
                     f"{res.error.n_products} products with the estimate's (largest residual "
                     f"{float(np.max(res.error.residuals)):.1e})")
    res = reigh(X, k, tol=1e-6, seed=0)
    lines.append(f"  reigh(tol=1e-6): stopped after {res.error.iterations} block products, "
                 f"error {err(res.eigenvalues):.1e}, relative residuals <= {float(np.max(res.error.residuals / res.eigenvalues)):.1e}")
    try:
        from sklearn.utils.extmath import randomized_svd
    except ImportError:
        lines.append("  (scikit-learn not installed: no peer comparison)")
    else:
        q = next(q for q in range(40) if err(randomized_svd(X, k, n_iter=q, random_state=0)[1]) <= 1e-8)
        t_p, (_, s_p, _) = timed(lambda: randomized_svd(X, k, n_iter=q, random_state=0))
        lines.append(
            f"  sklearn randomized_svd (n_iter={q}) {1e3 * t_p:.1f} ms, error {err(s_p):.1e}"
            f"  -> rsvd {t_p / times['rsvd, block Krylov']:.1f}x, reigh {t_p / times['reigh, block Krylov']:.1f}x faster"
        )
    return "\n".join(lines)


def solves(quick: bool) -> str:
    """The damped low-rank solve (Alg. 1 lines 16-17) against a dense solve."""
    d, r, k = (800, 40, 16) if quick else (3000, 120, 64)
    rng = np.random.default_rng(2)
    Q = np.linalg.qr(rng.standard_normal((d, r)))[0]
    L = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    X = rng.standard_normal((d, k))
    t_l, Y = timed(lambda: damped_solve(L, Q, X, 0.1, continuation=True))
    M = (Q * (L - L.min())) @ Q.T + (0.1 + L.min()) * np.eye(d)
    t_d, Y_ref = timed(lambda: np.linalg.solve(M, X), 1)
    err = np.linalg.norm(Y - Y_ref) / np.linalg.norm(Y_ref)
    return (
        f"damped_solve with spectrum continuation, d={d}, r={r}, {k} right-hand sides:\n"
        f"  {1e3 * t_l:.2f} ms vs numpy.linalg.solve {1e3 * t_d:.0f} ms ({t_d / t_l:.0f}x), relative difference {err:.1e}"
    )


def training(quick: bool) -> str:
    """``lowrank-online compare`` on the wide-first-layer teacher-student problem."""
    from .nn.experiment import RunConfig, compare, compare_table

    epochs = 1 if quick else 3
    methods = ["sgd", "kfac", "bkfac"] if quick else ["sgd", "adam", "kfac", "rkfac", "bkfac", "brkfac", "bkfacc"]
    runs = compare(RunConfig("teacher-student", epochs=epochs, T_brand=10), methods, seeds=1)
    return (
        f"lowrank-online compare: MLP 1024-256-10 on the teacher-student problem, {epochs} epoch(s), "
        "batch 128, rank 64, T_inv = T_brand = 10:\n" + compare_table(methods, runs, [0.80, 0.85])
    )


# Sections contributed by higher layers register themselves here as "module:function"; a
# section whose optional dependencies are missing is skipped with a note.
SECTIONS: dict[str, str | Callable[[bool], str]] = {
    "core": online_core,
    "randomized": randomized,
    "solve": solves,
    "pca": "lowrank_online._pca_demo:section",
    "kronecker": "lowrank_online.kronecker._demo:report",
    "dask": "lowrank_online._dask_demo:section",
    "training": training,
}


def _run_section(entry: str | Callable[[bool], str], quick: bool) -> str:
    if callable(entry):
        return entry(quick)
    module, func = entry.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except ImportError as err:
        return f"  (skipped: {err})"
    return fn(quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowrank_online.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append", help="run only these sections")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print("lowrank_online demo (CPU, NumPy backend)\n")
    for name in args.section or list(SECTIONS):
        t0 = time.perf_counter()
        print(f"== {name} ==")
        print(_run_section(SECTIONS[name], args.quick))
        print(f"  [{time.perf_counter() - t0:.1f} s]\n")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
