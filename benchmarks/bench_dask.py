"""The online core on Dask: one streaming update against recomputing, and against one process.

Run ``python benchmarks/bench_dask.py`` or ``python benchmarks/bench.py dask`` (several minutes on
2 cores; ``--quick`` for a smoke run of seconds). It starts a ``dask.distributed.LocalCluster`` with 2 worker processes
of one thread each. Then it prints, from that one run:

* the time of one streaming update, :func:`~lowrank_online.eigh_update` on Dask arrays (held
  rank r = 64, a batch of n = 64 columns, output rank r + n as :class:`LowRankEMA` holds it),
  at each d. The tall arrays are chunked by rows (``--rows`` per block).
* the time of ``dask.array.linalg.svd_compressed`` (k = 64, 2 power iterations, its default
  10 oversamples) on the concatenated data of the stream at the same d. That is ``T``
  batches, ``d x 64T``, persisted on the cluster. T = 2 is the smallest matrix that carries the
  same information as the update (``[Q L^1/2, A]``); the default stream length is T = 8.
* the time of the same update in one process with NumPy arrays (2 BLAS threads).
* the ratios, the flop counts (:func:`_measure.eigh_update_flops` and
  :func:`_measure.svd_compressed_flops`), the passes over the tall data and the tasks per
  update, and the fitted exponent p of time ~ d^p for every method.

``--json PATH`` also writes the figures, for ``examples/dask_scaling_plot.py``. ``--stream N``
prints instead the footprint of a stream of N small :class:`LowRankEMA` updates: the held
basis' graph, the scheduler's task records and the workers' memory along the stream, with
the two per-computation records that ``distributed`` itself keeps (the workers' cumulative
performance-metric entries and the scheduler's spans).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lowrank_online import eigh_update

if __package__:  # imported as benchmarks.bench_dask from the repository root
    from . import _measure
else:  # run as a script, or imported with this folder on sys.path (bench.py, the asv suite)
    import _measure

RANK = BATCH = 64
K_SVD, POWER_ITER, OVERSAMPLE = 64, 2, 10


def update_flops(d: int) -> float:
    """:func:`_measure.eigh_update_flops` at this table's sizes (r = n = 64, output r + n)."""
    return _measure.eigh_update_flops(d, RANK, BATCH)


def svd_compressed_flops(d: int, cols: int) -> float:
    """:func:`_measure.svd_compressed_flops` at this table's settings (k = 64 + 10, q = 2)."""
    return _measure.svd_compressed_flops(d, cols, K_SVD + OVERSAMPLE, POWER_ITER)


@contextlib.contextmanager
def cluster(n_workers: int = 2) -> Iterator[Any]:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.CRITICAL,
    ) as lc, Client(lc) as client:
        yield client


def _best(fn: Callable[[], object], repeat: int) -> float:
    """Best of ``repeat`` calls after a warm-up (imports, worker caches, first touch of the blocks)."""
    return _measure.best_time(fn, repeat)


def dask_problem(d: int, rows: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """Eigenvalues, an orthonormal d x 64 basis and a d x 64 batch, persisted on the cluster."""
    import array_api_compat.dask.array as dxp
    import dask.array as da

    # The library's own orthonormalisation and detach step, so that the basis is laid out on
    # the workers as eigh_update's results are (no public function returns a bare basis).
    from lowrank_online import _backend, _linalg

    gen = da.random.default_rng(seed)
    G = gen.standard_normal((d, RANK), chunks=(rows, -1))
    be = _backend.backend_of(G, dxp)
    Q = be.detach(_linalg.orthonormalize(G, be))
    L = da.from_array(np.sort(np.random.default_rng(seed).gamma(2.0, size=RANK))[::-1].copy())
    A = be.detach(gen.standard_normal((d, BATCH), chunks=(rows, -1)) / math.sqrt(BATCH))
    return L, Q, A


def time_dask_update(client: Any, d: int, rows: int, repeat: int) -> dict[str, Any]:
    from dask.distributed import get_task_stream

    L, Q, A = dask_problem(d, rows)
    t = _best(lambda: eigh_update(L, Q, A, decay=0.95, weight=0.05), repeat)
    with get_task_stream(client) as stream:
        eigh_update(L, Q, A, decay=0.95, weight=0.05)
    tasks = Counter(_prefix(x["key"]) for x in stream.data)
    return {"time": t, "tasks": sum(tasks.values()), "task_kinds": dict(tasks), "blocks": math.ceil(d / rows)}


def _prefix(key: Any) -> str:
    name = key[0] if isinstance(key, tuple) else str(key)
    parts = name.split("-")
    return "-".join(p for p in parts if not (len(p) >= 16 and all(c in "0123456789abcdef" for c in p)))


def time_svd_compressed(client: Any, d: int, rows: int, batches: int, repeat: int) -> float:
    import dask
    import dask.array as da
    from dask.distributed import wait

    X = da.random.default_rng(1).standard_normal((d, BATCH * batches), chunks=(rows, -1)).persist()
    wait(X)

    def run() -> None:
        u, s, v = da.linalg.svd_compressed(X, K_SVD, n_power_iter=POWER_ITER, n_oversamples=OVERSAMPLE, seed=0)
        out = dask.persist(u, s, v)
        wait(list(out))

    return _best(run, repeat)


def time_numpy_update(d: int, repeat: int) -> float:
    from lowrank_online import _array, _backend, _linalg  # the same basis as dask_problem's

    rng = np.random.default_rng(0)
    G = rng.standard_normal((d, RANK))
    Q = _linalg.orthonormalize(G, _backend.backend_of(G, _array.namespace(("G", G))))
    del G
    L = np.sort(rng.gamma(2.0, size=RANK))[::-1].copy()
    A = rng.standard_normal((d, BATCH)) / math.sqrt(BATCH)
    return _best(lambda: eigh_update(L, Q, A, decay=0.95, weight=0.05), repeat)


def stream_footprint(updates: int = 1000, d: int = 20_000, rows: int = 10_000, rank: int = 16,
                     n: int = 8) -> dict[str, Any]:
    """A :class:`LowRankEMA` fed ``updates`` batches on a fresh cluster: at checkpoints along
    the stream, the held basis' graph size, the scheduler's task records, and per worker the
    keys held, the managed bytes and the resident set; plus the median time per update."""
    import dask.array as da
    from dask.distributed import wait

    from lowrank_online import LowRankEMA

    marks = sorted({m for m in (1, 10, 100, updates // 2, updates) if 1 <= m <= updates})
    ema = LowRankEMA(rank, 0.95)
    rng = np.random.default_rng(0)
    seen: dict[int, Any] = {}
    times = []
    with cluster() as client:
        for k in range(1, updates + 1):
            A = da.from_array(rng.standard_normal((d, n)), chunks=(rows, -1))
            t0 = time.perf_counter()
            ema.update(A)
            times.append(time.perf_counter() - t0)
            if k in marks:
                wait(ema.eigenvectors)
                workers = client.run(_measure.worker_memory)
                seen[k] = {
                    "graph": len(ema.eigenvectors.__dask_graph__()),
                    "tasks": client.run_on_scheduler(_measure.scheduler_tasks),
                    "keys": sum(w["keys"] for w in workers.values()),
                    "managed": sum(w["managed"] for w in workers.values()),
                    "rss": [w["rss"] for w in workers.values()],
                    "metrics": sum(w["metrics"] for w in workers.values()),
                    "spans": client.run_on_scheduler(_measure.scheduler_spans),
                }
    return {"updates": updates, "d": d, "rows": rows, "rank": rank, "n": n,
            "median": float(np.median(times)), "marks": seen}


def stream_report(res: dict[str, Any]) -> str:
    lines = [
        (f"stream of {res['updates']} LowRankEMA updates: d = {res['d']} in blocks of {res['rows']} rows, "
         f"rank {res['rank']}, batches of {res['n']}; median {res['median'] * 1e3:.0f} ms per update"),
        (f"{'update':>7} {'graph keys':>10} {'scheduler tasks':>16} {'worker keys':>12} {'managed MiB':>12} "
         f"{'worker RSS MiB':>16} {'metric entries':>15} {'spans':>6}"),
    ]
    for k, m in sorted(res["marks"].items()):
        rss = " / ".join(f"{r / 2**20:.0f}" for r in m["rss"])
        lines.append(f"{k:>7} {m['graph']:>10} {m['tasks']:>16} {m['keys']:>12} {m['managed'] / 2**20:>12.2f} "
                     f"{rss:>16} "
                     f"{m['metrics']:>15} {m['spans']:>6}")
    return "\n".join(lines)


def run(quick: bool = False, *, ds: list[int] | None = None, rows: int | None = None,
        batches: tuple[int, ...] = (2, 8), numpy_max: int | None = None) -> dict[str, Any]:
    ds = ds or ([20_000, 50_000, 100_000] if quick else [200_000, 500_000, 1_000_000, 2_000_000])
    rows = rows or (10_000 if quick else 50_000)
    repeat = 2 if quick else 3
    out: dict[str, Any] = {
        "gemm_rate": _measure.gemm_rate(512 if quick else 4096), "rows": rows, "r": RANK, "n": BATCH,
        "batches": list(batches), "dask": {}, "svd_compressed": {}, "numpy": {},
    }
    with cluster() as client:
        for d in ds:
            out["dask"][d] = time_dask_update(client, d, rows, repeat)
            for t in batches:
                reps = 1 if d >= 1_000_000 else repeat
                out["svd_compressed"].setdefault(t, {})[d] = time_svd_compressed(client, d, rows, t, reps)
    for d in ds:
        if numpy_max is None or d <= numpy_max:
            out["numpy"][d] = time_numpy_update(d, 1 if d >= 1_000_000 else repeat)
    return out


def report(res: dict[str, Any]) -> str:
    rate, rows, batches = res["gemm_rate"], res["rows"], res["batches"]
    ds = sorted(res["dask"])
    lines = [
        f"machine float64 GEMM rate: {rate / 1e9:.1f} GFLOP/s (square GEMM, best of several, 2 threads)",
        f"LocalCluster: 2 worker processes x 1 thread; tall arrays in blocks of {rows} rows",
        f"update: eigh_update on Dask arrays, r = {res['r']}, n = {res['n']} (output r + n), float64",
        (f"svd_compressed: k = {K_SVD}, {POWER_ITER} power iterations, on the concatenated stream of T batches "
         f"(d x {res['n']}T)"),
        "",
    ]
    head = f"{'d':>9} {'Dask update':>12} {'NumPy update':>13} {'x NumPy':>8}"
    for t in batches:
        head += f" {'svd_c T=' + str(t):>13} {'ratio':>6}"
    head += f" {'GEMM frac':>10} {'tasks':>6}"
    lines.append(head)
    for d in ds:
        tu = res["dask"][d]["time"]
        tn = res["numpy"].get(d)
        row = f"{d:>9} {tu:>11.3f}s {(f'{tn:.3f}s' if tn else '-'):>13} {(f'{tu / tn:.2f}' if tn else '-'):>8}"
        for t in batches:
            ts = res["svd_compressed"][t].get(d)
            row += f" {ts:>12.3f}s {ts / tu:>5.1f}x"
        row += f" {update_flops(d) / tu / rate:>10.0%} {res['dask'][d]['tasks']:>6}"
        lines.append(row)
    lines += ["", "flops per update and per recomputation (at the largest d):"]
    d = ds[-1]
    lines.append(f"  update            {update_flops(d) / 1e9:8.1f} GFLOP  "
                 f"(4drn + dn(n+1) + 2d(r+n)^2 = {update_flops(d) / d:.0f} d)")
    for t in batches:
        f = svd_compressed_flops(d, BATCH * t)
        lines.append(f"  svd_compressed T={t:<2} {f / 1e9:7.1f} GFLOP  ({f / update_flops(d):.1f}x the update)")
    lines += [
        "passes over the tall data per update: 3 GEMM passes (Q^T A; W = A - Q C with W^T W; [Q W] Z),",
        "  then the sign reduction over the new basis; svd_compressed reads X 2q+2 = 6 times and",
        "  runs a tall-skinny QR of a d x 74 block. Client round trips per update: 2.",
        f"tasks per update at d = {d}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(res['dask'][d]['task_kinds'].items())),
        "",
        "fitted exponent p of time ~ d^p:",
    ]
    series = [("Dask update", {d: res["dask"][d]["time"] for d in ds}), ("NumPy update", res["numpy"])]
    series += [(f"svd_compressed T={t}", res["svd_compressed"][t]) for t in batches]
    for name, pts in series:
        if len(pts) >= 2:
            xs = sorted(pts)
            p = _measure.fitted_exponent(xs, [pts[x] for x in xs])
            lines.append(f"  {name:<20} p = {p:.2f}  (d = {xs[0]}..{xs[-1]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_dask.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    parser.add_argument("--ds", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated dimensions")
    parser.add_argument("--rows", type=int, help="rows per block of the tall arrays")
    parser.add_argument("--batches", type=lambda s: tuple(int(x) for x in s.split(",")), default=(2, 8),
                        help="stream lengths T for svd_compressed (default 2,8)")
    parser.add_argument("--numpy-max", type=int, help="skip the NumPy update above this d")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--stream", type=int, metavar="N",
                        help="instead: the graph and memory footprint along a stream of N small tracker updates")
    args = parser.parse_args(argv)
    if args.stream:
        print(stream_report(stream_footprint(args.stream)))
        return
    res = run(args.quick, ds=args.ds, rows=args.rows, batches=args.batches, numpy_max=args.numpy_max)
    print(report(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
