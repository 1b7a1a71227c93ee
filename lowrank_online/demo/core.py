"""The online core: B-updates of an exponential average, randomized decompositions, the damped solve."""

from __future__ import annotations

import importlib.util

import numpy as np

from .. import LowRankEMA, damped_solve, eigh_update, reigh, rsvd
from ._report import Section, best_time, faster_or_slower, progress


def online_core(quick: bool) -> Section:
    """B-updates of an exponential average against the dense average and numpy's eigh."""
    d, r, n, steps, rho = (600, 20, 8, 40, 0.95) if quick else (2000, 60, 32, 50, 0.95)
    rng = np.random.default_rng(0)
    root = np.linalg.qr(rng.standard_normal((d, 4 * r)))[0] * (0.9 ** np.arange(4 * r))
    tracker = LowRankEMA(rank=r, decay=rho)
    exact = None
    for _ in progress(range(steps), "B-updates", total=steps):
        A = root @ rng.standard_normal((4 * r, n)) + 1e-3 * rng.standard_normal((d, n))
        exact = A @ A.T if exact is None else rho * exact + (1 - rho) * A @ A.T
        tracker.update(A)
    t_eigh, (w, _) = best_time(lambda: np.linalg.eigh(exact), 1, warmup=False)
    w = w[::-1]
    Q, L = tracker.eigenvectors, tracker.eigenvalues
    k = Q.shape[1]
    err = np.linalg.norm(exact - (Q * L) @ Q.T) / np.linalg.norm(exact)
    best = np.sqrt(np.sum(w[k:] ** 2)) / np.linalg.norm(w)
    L0, Q0 = L[:r], Q[:, :r]
    t_upd, _ = best_time(lambda: eigh_update(L0, Q0, A, decay=rho, weight=1 - rho))
    out = Section("core", f"LowRankEMA, d={d}, rank={r}, batch={n}, {steps} B-updates (paper 001, Alg. 4):")
    out.line(f"error vs the exact average {err:.2e}; the best rank-{k} representation of it: {best:.2e}")
    out.line(f"one update {1e3 * t_upd:.1f} ms, numpy eigh of the average {1e3 * t_eigh:.0f} ms: the update is "
             f"{faster_or_slower(t_upd, t_eigh)}")
    # Truncating at every step loses more than one truncation of the final average; a few times
    # the best error is what the theory allows for a spectrum decaying by 0.9 per direction.
    out.check(f"error / best rank-{k} error", err / best, 10.0)
    out.check("orthonormality |Q^T Q - I|", np.abs(Q.T @ Q - np.eye(k)).max(), 1e-10)
    out.check("top eigenvalue, relative error", abs(L[0] - w[0]) / w[0], 1e-4)
    return out


def randomized(quick: bool) -> Section:
    """rsvd / reigh (block Krylov and subspace iteration) against scikit-learn's randomized_svd,
    each with its smallest n_iter for top-k eigenvalues to 1e-8, and a tol-driven call."""
    d, k = (500, 20) if quick else (1500, 40)
    target = 1e-8
    rng = np.random.default_rng(1)
    B = rng.standard_normal((d, 4 * k)) * (0.95 ** np.arange(4 * k))
    X = B @ B.T
    w = np.linalg.eigvalsh(X)[::-1][:k]

    def err(vals: np.ndarray) -> float:
        return float(np.max(np.abs(vals - w) / w))

    def smallest_n_iter(call, values, limit: int = 30) -> tuple[int, object]:
        for q in range(limit):
            res = call(q)
            if err(values(res)) <= target:
                return q, res
        return limit - 1, res

    calls = {
        "rsvd, block Krylov": lambda q: rsvd(X, k, n_iter=q, seed=0, estimate_error=True),
        "rsvd, subspace": lambda q: rsvd(X, k, n_iter=q, method="subspace", seed=0, estimate_error=True),
        "reigh, block Krylov": lambda q: reigh(X, k, n_iter=q, seed=0, estimate_error=True),
        "reigh, subspace": lambda q: reigh(X, k, n_iter=q, method="subspace", seed=0, estimate_error=True),
    }
    out = Section("randomized", f"Randomized decompositions of a {d}x{d} PSD matrix, rank {k}, smallest n_iter for "
                                f"top-k eigenvalues to {target:.0e}:")
    times = {}
    for name in progress(list(calls), "methods"):
        call = calls[name]
        values = (lambda r: r.eigenvalues) if name.startswith("reigh") else (lambda r: r.S)
        q, res = smallest_n_iter(call, values)
        times[name], _ = best_time(lambda c=call, q=q: c(q), 2, warmup=False)
        out.line(f"{name:20s} n_iter={q:2d} {1e3 * times[name]:7.1f} ms, {res.error.n_products} products with the "
                 f"error estimate (largest residual {float(np.max(res.error.residuals)):.1e})")
        out.check(f"{name}: top-{k} eigenvalues, max relative error", err(values(res)), target)
    tol = 1e-6
    res = reigh(X, k, tol=tol, seed=0)
    rel = float(np.max(res.error.residuals / res.eigenvalues))
    out.line(f"reigh(tol={tol:.0e}): stopped after {res.error.iterations} block products, "
             f"eigenvalue error {err(res.eigenvalues):.1e}")
    out.check(f"reigh(tol={tol:.0e}): largest relative residual", rel, tol)
    if importlib.util.find_spec("sklearn") is None:
        out.line("(scikit-learn not installed: no peer comparison)")
        return out
    from sklearn.utils.extmath import randomized_svd

    q, (_, s_p, _) = smallest_n_iter(lambda q: randomized_svd(X, k, n_iter=q, random_state=0), lambda r: r[1])
    t_p, _ = best_time(lambda: randomized_svd(X, k, n_iter=q, random_state=0), 2, warmup=False)
    out.line(f"sklearn randomized_svd (n_iter={q}) {1e3 * t_p:.1f} ms: rsvd is "
             f"{faster_or_slower(times['rsvd, block Krylov'], t_p)}, reigh "
             f"{faster_or_slower(times['reigh, block Krylov'], t_p)}")
    out.check("sklearn randomized_svd: max relative error", err(s_p), target)
    return out


def solves(quick: bool) -> Section:
    """The damped low-rank solve (Alg. 1 lines 16-17) against a dense solve."""
    d, r, k = (800, 40, 16) if quick else (2000, 120, 64)
    rng = np.random.default_rng(2)
    Q = np.linalg.qr(rng.standard_normal((d, r)))[0]
    L = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    X = rng.standard_normal((d, k))
    t_l, Y = best_time(lambda: damped_solve(L, Q, X, 0.1, continuation=True))
    M = (Q * (L - L.min())) @ Q.T + (0.1 + L.min()) * np.eye(d)
    t_d, Y_ref = best_time(lambda: np.linalg.solve(M, X), 1, warmup=False)
    out = Section("solve", f"damped_solve with spectrum continuation, d={d}, r={r}, {k} right-hand sides:")
    out.line(f"{1e3 * t_l:.2f} ms, numpy.linalg.solve {1e3 * t_d:.0f} ms: {faster_or_slower(t_l, t_d)}")
    out.check("relative difference from the dense solve", np.linalg.norm(Y - Y_ref) / np.linalg.norm(Y_ref), 1e-10)
    return out
