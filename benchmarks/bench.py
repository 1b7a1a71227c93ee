"""Ratio tables: the B-update against its peers, and the preconditioners against each other.

Run ``python benchmarks/bench.py`` from the repository root (a few minutes on 2 cores;
``--quick`` for a smoke run). ``python benchmarks/bench.py curvature`` prints the curvature
table of paper 001's FC layer 0 (see :func:`curvature_table`; the dense K-FAC
eigendecomposition of the 16385 x 16385 factor alone takes several minutes);
``python benchmarks/bench.py dask`` the Dask table of ``bench_dask.py`` (its options follow,
``python benchmarks/bench_dask.py -h``); ``python benchmarks/bench.py wide`` the B-update with
batches wider than the dimension (see :func:`wide_batch_table`). The default table prints,
from one run on one machine:

* the machine's float64 GEMM rate (square 4096 GEMM, best of several);
* time of ``eigh_update`` (r = 220, n = 256, the paper's sizes) against ``numpy.linalg.eigh``
  of the explicit d x d average and against scikit-learn's ``randomized_svd`` of it at the
  tracked rank, at d = 4096 and 8192, with the ratios;
* the fraction of the GEMM rate ``eigh_update`` reaches under the flop model
  :func:`_measure.eigh_update_flops` (``4drn + dn(n+1) + 2d(r+n)^2``);
* the fitted exponent p of time ~ d^p for every method.

The asv suite in ``asv_benchmarks/`` tracks the same functions over time; this script is the
one-shot comparison for the docs. Timer, GEMM rate, exponent and flop model come from
``_measure.py`` in this folder.
"""

from __future__ import annotations

import argparse
import functools
import math

import numpy as np

from lowrank_online import eigh_update

if __package__:  # imported as benchmarks.bench from the repository root
    from . import _measure
else:  # python benchmarks/bench.py: this folder is sys.path[0]
    import _measure

# The tables' timer: no further repeat starts after BUDGET seconds (at least one call runs).
BUDGET = 20.0
_best = functools.partial(_measure.best_time, budget=BUDGET)


def _problem(d: int, r: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, r)))
    L = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    A = rng.standard_normal((d, n)) / math.sqrt(n)
    return L, Q, A


def _dense(L, Q, A, rho):
    return rho * (Q * L) @ Q.T + (1 - rho) * A @ A.T


def _dense_alternative(M, A, rho):
    """What a B-update with a wide batch stands in for: a held d x d average, updated and eigendecomposed."""
    return np.linalg.eigh(rho * M + (1 - rho) * (A @ A.T))


def _seconds(t):
    return f"{t:.4f}s" if t is not None else "-"


def _ratio(t, base):
    return f"{t / base:.0f}x" if t is not None else "-"


def wide_batch_table(quick: bool = False, repeat: int = 15) -> str:
    """B-update with batches wider than the dimension against the dense alternative.

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
            tu = _best(functools.partial(eigh_update, L, Q, A, decay=rho, weight=1 - rho), repeat)
            td = _best(functools.partial(_dense_alternative, M, A, rho), repeat)
            times[dtype, d, n] = tu
            lines.append(f"{dtype:>8} {d:>5} {n:>6} {r:>4} {tu * 1e3:>10.2f}ms {td * 1e3:>8.2f}ms {tu / td:>6.2f}")
    lines.append("")
    for dtype in ("float64", "float32"):
        growth = times[(dtype, *doubled)] / times[(dtype, *base)]
        lines.append(f"{dtype}: eigh_update at n = {doubled[1]} / n = {base[1]} (d = {base[0]}): {growth:.2f}x")
    return "\n".join(lines)


def run(quick: bool = False, *, peers: bool = True, repeat: int | None = None) -> dict:
    """The core table's figures; ``peers=False`` times only ``eigh_update`` and the GEMM rate
    (what the GEMM fractions need, a minute instead of several)."""
    r, n, rho = (20, 16, 0.95) if quick else (220, 256, 0.95)
    update_ds = [256, 512, 1024] if quick else [2048, 4096, 8192, 16384]
    eigh_ds = [128, 256, 512] if quick else [1024, 2048, 4096, 8192]
    rsvd_ds = [256, 512] if quick else [2048, 4096, 8192]
    repeat = repeat or (3 if quick else 7)

    rate = _measure.gemm_rate(512 if quick else 4096)
    out: dict = {"gemm_rate": rate, "r": r, "n": n, "update": {}, "update_median": {}, "eigh": {}, "rsvd": {}}
    for d in update_ds:
        L, Q, A = _problem(d, r, n)
        ts = _measure.timings(functools.partial(eigh_update, L, Q, A, decay=rho, weight=1 - rho), repeat,
                              budget=BUDGET)
        out["update"][d], out["update_median"][d] = min(ts), float(np.median(ts))
    out["table_ds"] = update_ds[1:]
    if not peers:
        return out
    for d in eigh_ds:
        L, Q, A = _problem(d, r, n)
        X = _dense(L, Q, A, rho)
        out["eigh"][d] = _best(functools.partial(np.linalg.eigh, X), 3 if d <= 4096 else 1, budget=60.0)
    try:
        from sklearn.utils.extmath import randomized_svd
    except ImportError:  # optional peer
        randomized_svd = None
    if randomized_svd is not None:
        for d in rsvd_ds:
            L, Q, A = _problem(d, r, n)
            X = _dense(L, Q, A, rho)
            out["rsvd"][d] = _best(functools.partial(randomized_svd, X, r, random_state=0), 3, budget=60.0)
    return out


def report(res: dict) -> str:
    r, n, rate = res["r"], res["n"], res["gemm_rate"]
    lines = [
        f"machine float64 GEMM rate: {rate / 1e9:.1f} GFLOP/s (square GEMM, best of several)",
        f"eigh_update: r = {r}, n = {n}, decay 0.95; peers on the explicit d x d average",
        "",
        (f"{'d':>6} {'eigh_update':>12} {'numpy eigh':>11} {'sklearn rsvd':>13} {'x eigh':>8} {'x rsvd':>8} "
         f"{'GEMM frac':>10} {'(median)':>9}"),
    ]
    for d in res["table_ds"]:
        tu, tm = res["update"][d], res["update_median"][d]
        te = res["eigh"].get(d)
        tr = res["rsvd"].get(d)
        flops = _measure.eigh_update_flops(d, r, n)
        lines.append(
            f"{d:>6} {_seconds(tu):>12} {_seconds(te):>11} {_seconds(tr):>13} {_ratio(te, tu):>8} "
            f"{_ratio(tr, tu):>8} {flops / tu / rate:>10.0%} {flops / tm / rate:>9.0%}"
        )
    lines.append("")
    lines.append(f"GEMM frac: flop model 4drn + dn(n+1) + 2d(r+n)^2 = {_measure.eigh_update_flops(d, r, n) / d:,.0f} d "
                 "(benchmarks/_measure.py), over the best (median) time, over the GEMM rate")
    lines.append("")
    lines.append("fitted exponent p of time ~ d^p:")
    for key, name in (("update", "eigh_update"), ("eigh", "numpy.linalg.eigh"), ("rsvd", "sklearn randomized_svd")):
        pts = res[key]
        if len(pts) >= 2:
            ds = sorted(pts)
            lines.append(
                f"  {name:<24} p = {_measure.fitted_exponent(ds, [pts[d] for d in ds]):.2f}  (d = {ds[0]}..{ds[-1]})"
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

    from lowrank_online.curvature import CurvatureConfig, registry
    from lowrank_online.curvature.damping import Damping
    from lowrank_online.curvature.families import LayerShape, build

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
            inverse = _best(functools.partial(fam.update, state, a, g, 0), 3)
            apply_t = _best(functools.partial(fam.precondition_factored, state, g / n, a, damping, 1), 3)
            G_t, A_t = fam.precondition_factored(state, g / n, a, damping, 1)
            form = _best(functools.partial(np.matmul, G_t.T, A_t), 3)
        else:
            stats = _best(functools.partial(fam.update, state, a, g, 1), 2)
            dense_evd = kind == "eigh" and not quick  # minutes per call: one un-warmed run
            both = _best(functools.partial(fam.update, state, a, g, 0), 1 if dense_evd else 2, warmup=not dense_evd)
            inverse = max(both - stats, 0.0)
            apply_t = _best(functools.partial(fam.precondition, state, grad, damping, 1), 1 if dense_evd else 2,
                            warmup=not dense_evd)
            form = 0.0
        per_step = (stats + inverse) / period + apply_t
        rows.append((method, inverse, stats, apply_t, form, per_step))
    lines = [
        (f"curvature of one FC layer: {d_in - 1} (+bias) in x {d_out} out, batch {n}, r = {r}, "
         f"T_inv = T_Brand = T_updt = {period}"),
        (f"{'method':<8} {'inverse update':>15} {'stats update':>13} {'apply/step':>11} {'form step':>10} "
         f"{'amortised/step':>15} {'inverse x':>10} {'per-step x':>11}"),
    ]
    base = rows[-1]
    for method, inv, st, ap, fm, ps in rows:
        lines.append(
            f"{method:<8} {inv:>14.3f}s {st:>12.3f}s {ap:>10.4f}s {fm:>9.4f}s {ps:>14.4f}s "
            f"{inv / base[1]:>9.1f}x {ps / base[5]:>10.1f}x"
        )
    lines.append("(x: relative to bkfac; 'form step' is G~^T A~ of the factored application, "
                 "which replaces forming the gradient)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", default="core", choices=["core", "curvature", "dask", "wide"])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    parser.add_argument("--no-peers", action="store_true",
                        help="core table: time eigh_update only (the GEMM fractions), not the peers")
    parser.add_argument("--repeat", type=int, help="core table: calls of eigh_update per size (default 7)")
    args, rest = parser.parse_known_args(argv)
    if args.table == "wide":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(wide_batch_table(quick=args.quick))
        return
    if args.table == "dask":
        # One way only: bench_dask imports _measure, never this module.
        if __package__:
            from . import bench_dask
        else:
            import bench_dask

        bench_dask.main(rest + (["--quick"] if args.quick else []))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.table == "curvature":
        print(curvature_table(quick=args.quick))
    else:
        print(report(run(quick=args.quick, peers=not args.no_peers, repeat=args.repeat)))


if __name__ == "__main__":
    main()
