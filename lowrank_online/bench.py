"""Ratio tables: the B-update against its peers, and the preconditioners against each other.

Run ``python -m lowrank_online.bench`` (a few minutes on 2 cores; ``--quick`` for a smoke run).
``python -m lowrank_online.bench curvature`` prints the curvature table of paper 001's FC
layer 0 (see :func:`curvature_table`; the dense K-FAC eigendecomposition of the 16385 x 16385
factor alone takes several minutes); ``python -m lowrank_online.bench dask`` the Dask table of
:mod:`lowrank_online.bench_dask`; ``python -m lowrank_online.bench wide`` the B-update with
batches wider than the dimension (see :func:`wide_batch_table`). The default table prints,
from one run on one machine:

* the machine's float64 GEMM rate (square 4096 GEMM, best of several);
* time of ``eigh_update`` (r = 220, n = 256, the paper's sizes) against ``numpy.linalg.eigh``
  of the explicit d x d average and against scikit-learn's ``randomized_svd`` of it at the
  tracked rank, at d = 4096 and 8192, with the ratios;
* the fraction of the GEMM rate ``eigh_update`` reaches under the flop model
  ``4drn + 4dn^2 + 2d(r+n)^2``;
* the fitted exponent p of time ~ d^p for every method.

The asv suite in ``asv_benchmarks/`` tracks the same functions over time; this script is the
one-shot comparison for the docs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np

from ._timing import timed
from .brand import eigh_update


def best_time(fn: Callable[[], object], repeat: int, budget: float = 20.0, warmup: bool = True) -> float:
    """Best wall time of ``repeat`` calls (fewer once ``budget`` seconds are spent), after one
    untimed warm-up call unless ``warmup=False``."""
    return timed(fn, repeat, warmup=warmup, budget=budget)[0]


def gemm_rate(n: int = 4096, repeat: int = 5) -> float:
    """Measured float64 GEMM rate in flop/s (square n x n product)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    return 2.0 * n**3 / best_time(lambda: a @ b, repeat)


def fitted_exponent(ds: list[int], ts: list[float]) -> float:
    """Least-squares slope of log t against log d."""
    x, y = np.log(np.asarray(ds, float)), np.log(np.asarray(ts, float))
    return float(np.polyfit(x, y, 1)[0])


def b_update_flops(d: int, r: int, n: int) -> float:
    """The issue's flop model of one B-update."""
    return 4.0 * d * r * n + 4.0 * d * n * n + 2.0 * d * (r + n) ** 2


def _problem(d: int, r: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, r)))
    L = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    A = rng.standard_normal((d, n)) / math.sqrt(n)
    return L, Q, A


def _dense(L, Q, A, rho):
    return rho * (Q * L) @ Q.T + (1 - rho) * A @ A.T


def wide_batch_table(quick: bool = False, repeat: int = 15) -> str:
    """B-update with batches wider than the dimension (issue 11) against the dense alternative.

    A convolution layer's statistics have ``n = batch x positions`` columns, more than the
    dimension d. For (d, n) = (145, 4096), (145, 8192), (10, 2048), r = min(64, d), decay
    0.95, float64 and float32, the table prints the time of one ``eigh_update`` (which forms
    ``A A^T`` and eigendecomposes the d x d updated matrix), the time of the dense alternative
    on the same batch (a held d x d average ``rho M + (1 - rho) A A^T`` and NumPy's ``eigh``
    of it), their ratio, and the growth of the update time from n = 4096 to n = 8192 (linear
    work in n plus an n-independent d x d eigendecomposition: at most 2x). Best of
    ``repeat`` calls each. ``--quick``: (24, 512), (24, 1024), (6, 256).
    """
    sizes = [(24, 512), (24, 1024), (6, 256)] if quick else [(145, 4096), (145, 8192), (10, 2048)]
    base, doubled = sizes[0], sizes[1]  # same d, twice the columns
    rho = 0.95
    times = {}
    lines = [
        "B-update with n > d columns (r = min(64, d), decay 0.95) against the dense alternative",
        "(held d x d average, rho M + (1 - rho) A A^T, numpy eigh); best of several calls",
        "",
        f"{'dtype':>8} {'d':>5} {'n':>6} {'r':>4} {'eigh_update':>12} {'dense':>10} {'ratio':>6}",
    ]
    for dtype in ("float64", "float32"):
        for d, n in sizes:
            r = min(64, d)
            L, Q, A = (x.astype(dtype) for x in _problem(d, r, n))
            M = (Q * L) @ Q.T
            tu = best_time(lambda: eigh_update(L, Q, A, decay=rho, weight=1 - rho), repeat)
            td = best_time(lambda: np.linalg.eigh(rho * M + (1 - rho) * (A @ A.T)), repeat)
            times[dtype, d, n] = tu
            lines.append(f"{dtype:>8} {d:>5} {n:>6} {r:>4} {tu * 1e3:>10.2f}ms {td * 1e3:>8.2f}ms {tu / td:>6.2f}")
    lines.append("")
    for dtype in ("float64", "float32"):
        growth = times[(dtype, *doubled)] / times[(dtype, *base)]
        lines.append(f"{dtype}: eigh_update at n = {doubled[1]} / n = {base[1]} (d = {base[0]}): {growth:.2f}x")
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    r, n, rho = (20, 16, 0.95) if quick else (220, 256, 0.95)
    update_ds = [256, 512, 1024] if quick else [2048, 4096, 8192, 16384]
    eigh_ds = [128, 256, 512] if quick else [1024, 2048, 4096, 8192]
    rsvd_ds = [256, 512] if quick else [2048, 4096, 8192]
    table_ds = [256, 512] if quick else [4096, 8192]
    repeat = 3 if quick else 7

    rate = gemm_rate(512 if quick else 4096)
    out: dict = {"gemm_rate": rate, "r": r, "n": n, "update": {}, "eigh": {}, "rsvd": {}}
    for d in update_ds:
        L, Q, A = _problem(d, r, n)
        out["update"][d] = best_time(lambda: eigh_update(L, Q, A, decay=rho, weight=1 - rho), repeat)
    for d in eigh_ds:
        L, Q, A = _problem(d, r, n)
        X = _dense(L, Q, A, rho)
        out["eigh"][d] = best_time(lambda: np.linalg.eigh(X), 3 if d <= 4096 else 1, budget=60.0)
    try:
        from sklearn.utils.extmath import randomized_svd
    except ImportError:  # optional peer
        randomized_svd = None
    if randomized_svd is not None:
        for d in rsvd_ds:
            L, Q, A = _problem(d, r, n)
            X = _dense(L, Q, A, rho)
            out["rsvd"][d] = best_time(lambda: randomized_svd(X, r, random_state=0), 3, budget=60.0)
    out["table_ds"] = table_ds
    return out


def report(res: dict) -> str:
    r, n, rate = res["r"], res["n"], res["gemm_rate"]
    lines = [
        f"machine float64 GEMM rate: {rate / 1e9:.1f} GFLOP/s (square GEMM, best of several)",
        f"eigh_update: r = {r}, n = {n}, decay 0.95; peers on the explicit d x d average",
        "",
        f"{'d':>6} {'eigh_update':>12} {'numpy eigh':>11} {'sklearn rsvd':>13} {'x eigh':>8} {'x rsvd':>8} {'GEMM frac':>10}",
    ]
    for d in res["table_ds"]:
        tu = res["update"].get(d)
        te = res["eigh"].get(d)
        tr = res["rsvd"].get(d)
        if tu is None:
            L, Q, A = _problem(d, r, n)
            tu = best_time(lambda: eigh_update(L, Q, A, decay=0.95, weight=0.05), 5)
        frac = b_update_flops(d, r, n) / tu / rate
        fmt = lambda t: f"{t:.4f}s" if t is not None else "-"  # noqa: E731
        ratio = lambda t: f"{t / tu:.0f}x" if t is not None else "-"  # noqa: E731
        lines.append(
            f"{d:>6} {fmt(tu):>12} {fmt(te):>11} {fmt(tr):>13} {ratio(te):>8} {ratio(tr):>8} {frac:>10.0%}"
        )
    lines.append("")
    lines.append("fitted exponent p of time ~ d^p:")
    for key, name in (("update", "eigh_update"), ("eigh", "numpy.linalg.eigh"), ("rsvd", "sklearn randomized_svd")):
        pts = res[key]
        if len(pts) >= 2:
            ds = sorted(pts)
            lines.append(
                f"  {name:<24} p = {fitted_exponent(ds, [pts[d] for d in ds]):.2f}  (d = {ds[0]}..{ds[-1]})"
            )
    return "\n".join(lines)


def curvature_table(quick: bool = False, period: int = 25) -> str:
    """Curvature cost of one FC layer per method: kfac vs rkfac vs bkfac (linear-time application).

    The layer is paper 001's FC layer 0 (16384 inputs + bias, 2048 outputs, batch 256, r = 220;
    ``--quick``: 1024 x 256, batch 64, r = 32). The table reports, for each method:

    * the time of one inverse update (dense EVD, randomized EVD, or B-update of both factors);
    * the statistics update (the dense EA of both factors; pure b-kfac has none);
    * the per-step application to one gradient (Alg. 1 l. 16-17 on ``[W b]``; for b-kfac the
      factored Alg. 8 on ``(G, A)``, plus, separately, forming the step ``G~^T A~``, which is no
      more than plain SGD spends forming its gradient);
    * the amortised curvature time per step with ``T_inv = T_Brand = T_updt = period``.
    """
    import array_api_compat.numpy as xp

    from .curvature import CurvatureConfig, registry
    from .curvature.damping import Damping
    from .curvature.families import LayerShape, build

    d_in, d_out, n, r = (1025, 256, 64, 32) if quick else (16385, 2048, 256, 220)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d_in)) * (0.99 ** np.arange(d_in))
    g = rng.standard_normal((n, d_out)) * (0.99 ** np.arange(d_out))
    grad = g.T @ a / n
    rows = []
    for method in ("kfac", "rkfac", "bkfac"):
        # The pure functions of the layer: update at step 0 recomputes the inverse (0 is a
        # multiple of every period), at step 1 it only accumulates statistics.
        config = CurvatureConfig(method, rank=r, T_inv=period, T_brand=period, T_updt=period)
        fam = build(config, registry.lookup(method), LayerShape(0, d_in, d_out, xp, None))
        state = fam.init(a, g, 0)
        damping = Damping(config.damping_at(1))
        kind = registry.lookup(method).kinds[0]
        if kind == "brand":
            stats = 0.0  # no dense EA: the batch goes straight into the B-update
            inverse = best_time(lambda: fam.update(state, a, g, 0), 3)
            apply_t = best_time(lambda: fam.precondition_factored(state, g / n, a, damping, 1), 3)
            G_t, A_t = fam.precondition_factored(state, g / n, a, damping, 1)
            form = best_time(lambda: G_t.T @ A_t, 3)
        else:
            stats = best_time(lambda: fam.update(state, a, g, 1), 2)
            dense_evd = kind == "eigh" and not quick  # minutes per call: one un-warmed run
            both = best_time(lambda: fam.update(state, a, g, 0), 1 if dense_evd else 2, warmup=not dense_evd)
            inverse = max(both - stats, 0.0)
            apply_t = best_time(lambda: fam.precondition(state, grad, damping, 1), 1 if dense_evd else 2,
                                warmup=not dense_evd)
            form = 0.0
        per_step = (stats + inverse) / period + apply_t
        rows.append((method, inverse, stats, apply_t, form, per_step))
    lines = [
        f"curvature of one FC layer: {d_in - 1} (+bias) in x {d_out} out, batch {n}, r = {r}, "
        f"T_inv = T_Brand = T_updt = {period}",
        f"{'method':<8} {'inverse update':>15} {'stats update':>13} {'apply/step':>11} {'form step':>10} "
        f"{'amortised/step':>15} {'inverse x':>10} {'per-step x':>11}",
    ]
    base = rows[-1]
    for method, inv, st, ap, fm, ps in rows:
        lines.append(
            f"{method:<8} {inv:>14.3f}s {st:>12.3f}s {ap:>10.4f}s {fm:>9.4f}s {ps:>14.4f}s "
            f"{inv / base[1]:>9.1f}x {ps / base[5]:>10.1f}x"
        )
    lines.append("(x: relative to bkfac; 'form step' is G~^T A~ of the factored application, which replaces forming the gradient)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowrank_online.bench", description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", default="core", choices=["core", "curvature", "dask", "wide"])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    args, rest = parser.parse_known_args(argv)
    if args.table == "wide":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(wide_batch_table(quick=args.quick))
        return
    if args.table == "dask":
        from . import bench_dask  # the Dask table has its own options (python -m lowrank_online.bench_dask -h)

        bench_dask.main(rest + (["--quick"] if args.quick else []))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.table == "curvature":
        print(curvature_table(quick=args.quick))
    else:
        print(report(run(quick=args.quick)))


if __name__ == "__main__":
    main()
