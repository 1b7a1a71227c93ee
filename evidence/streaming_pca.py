"""StreamingPCA against scikit-learn's IncrementalPCA on the same stream, and on Dask.

1. **Time per ``partial_fit`` and peak memory**, :class:`~lowrank_online.StreamingPCA` against
   scikit-learn's ``IncrementalPCA`` fed the same batches (256 rows, n_components 64, float64) at
   d = 2,000, 10,000 and 50,000 features, with 1 and with 2 BLAS threads. The stream is a
   low-rank signal (40 latent directions with a decaying spectrum) plus unit noise around an
   offset. After the timed batches both estimators are compared attribute by attribute.
2. **Where the time goes** at the largest d (1 thread): the pieces of one update of each
   estimator, timed on the same state and batch.
3. **Dask**: a stream of float32 batches of 2,000,000 features (64 rows, n_components 64) on a
   ``LocalCluster`` of 2 worker processes with 1 thread and a 2 GiB memory limit each, against
   the peak resident memory of one NumPy process running the same stream. The Dask result is
   checked against NumPy and scikit-learn on the same stream at 50,000 features.

Timing: after two warm-up batches (the first fixes the components, the second reaches the
steady state) every round feeds one new batch to both estimators, in alternating order, and
times each call; the table gives the best and the median over the rounds. The machine is
shared: ratios of best times are the robust figure, absolute times are noisy. Memory: the peak
resident set of a fresh process per method during one ``partial_fit``, above what it held
before the call (``VmHWM`` after a reset through ``/proc/self/clear_refs``, as
``evidence/peers.py`` measures).

``python evidence/streaming_pca.py`` regenerates ``docs/evidence/streaming_pca_table.rst`` and
``docs/evidence/streaming_pca.png`` (about 10 minutes on 2 cores, most of it scikit-learn at
d = 50,000 and the Dask stream); ``--quick`` runs small sizes in about a minute and writes
nothing unless ``--output-dir`` is given; ``--no-dask`` / ``--no-memory`` skip those parts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see evidence/peers.py

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import lowrank_online  # noqa: E402
from lowrank_online import StreamingPCA, _backend, _linalg  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))  # the one GEMM rate
from _measure import gemm_rate  # noqa: E402
from _publish import publish, pyplot  # noqa: E402
from peers import _CHILD_ENV, _status_kib, limit_threads  # noqa: E402


@dataclass(frozen=True)
class Setup:
    quick: bool
    sizes: tuple
    k: int
    n: int
    rounds: int
    breakdown_d: int
    dask_d: int
    dask_n: int
    dask_k: int
    dask_batches: int
    dask_rows: int
    dask_memory: str
    dask_check_d: int
    threads: tuple = (1, 2)
    latent: int = 40
    noise: float = 1.0
    dask_dtype: str = "float32"
    targets: tuple = ((10_000, 3.0), (50_000, 3.0))  # (d, speed-up) of the issue; aim 5x


FULL = Setup(quick=False, sizes=(2_000, 10_000, 50_000), k=64, n=256, rounds=5, breakdown_d=50_000,
             dask_d=2_000_000, dask_n=64, dask_k=64, dask_batches=6, dask_rows=50_000, dask_memory="2GiB",
             dask_check_d=50_000)
QUICK = Setup(quick=True, sizes=(500, 1_000, 2_000), k=16, n=64, rounds=3, breakdown_d=2_000,
              dask_d=40_000, dask_n=32, dask_k=16, dask_batches=3, dask_rows=10_000, dask_memory="1GiB",
              dask_check_d=40_000, targets=((1_000, 1.0), (2_000, 1.0)))


# ============================================================================================
# the stream
# ============================================================================================
class Stream:
    """Batches of ``n`` rows: a low-rank signal plus noise around an offset (sensor-like data)."""

    def __init__(self, d: int, s: Setup, seed: int = 0) -> None:
        self.rng = np.random.default_rng([seed, d])
        self.loadings = self.rng.standard_normal((s.latent, d)) * (3.0 * 0.85 ** np.arange(s.latent))[:, None]
        self.offset = 2.0 * self.rng.standard_normal(d)
        self.n, self.noise = s.n, s.noise

    def batch(self) -> np.ndarray:
        X = self.rng.standard_normal((self.n, self.loadings.shape[0])) @ self.loadings
        X += self.noise * self.rng.standard_normal(X.shape)
        X += self.offset
        return X


def _sklearn_ipca():
    from sklearn.decomposition import IncrementalPCA

    return IncrementalPCA


def agreement(ours: Any, ref: Any) -> dict:
    """StreamingPCA's attributes against scikit-learn's (both on NumPy)."""
    C, R = np.asarray(ours.components_, float), np.asarray(ref.components_, float)
    rel = lambda a, b: float(np.max(np.abs(np.asarray(a, float) - b)) / np.max(np.abs(b)))  # noqa: E731
    return {
        "components": float(np.max(np.abs(C - R))),
        "singular_values": rel(ours.singular_values_, ref.singular_values_),
        "explained_variance_ratio": rel(ours.explained_variance_ratio_, ref.explained_variance_ratio_),
        "mean": rel(ours.mean_, ref.mean_),
        "var": rel(ours.var_, ref.var_),
        "noise_variance": abs(float(ours.noise_variance_) / float(ref.noise_variance_) - 1.0),
        "orthonormality": float(np.max(np.abs(C @ C.T - np.eye(C.shape[0])))),
    }


# ============================================================================================
# 1. time per partial_fit, both estimators on the same stream
# ============================================================================================
def time_stream(d: int, s: Setup, threads: int, log=print) -> dict:
    IncrementalPCA = _sklearn_ipca()
    stream = Stream(d, s)
    ours, ref = StreamingPCA(s.k), IncrementalPCA(s.k)
    samples: dict[str, list[float]] = {"StreamingPCA": [], "IncrementalPCA": []}
    with limit_threads(threads):
        for _ in range(2):
            B = stream.batch()
            ours.partial_fit(B)
            ref.partial_fit(B)
        for r in range(s.rounds):
            B = stream.batch()
            pair = [("StreamingPCA", ours), ("IncrementalPCA", ref)]
            for name, est in pair if r % 2 == 0 else pair[::-1]:
                t0 = time.perf_counter()
                est.partial_fit(B)
                samples[name].append(time.perf_counter() - t0)
    acc = agreement(ours, ref)
    row = {"d": d, "threads": threads, "batches": 2 + s.rounds, **{f"acc_{k}": v for k, v in acc.items()}}
    for name, ts in samples.items():
        row[f"{name}_best"], row[f"{name}_median"] = min(ts), float(np.median(ts))
    row["ratio_best"] = row["IncrementalPCA_best"] / row["StreamingPCA_best"]
    row["ratio_median"] = row["IncrementalPCA_median"] / row["StreamingPCA_median"]
    log(f"  d={d:<6d} {threads} thr  StreamingPCA best {row['StreamingPCA_best']:.3f}s median "
        f"{row['StreamingPCA_median']:.3f}s | IncrementalPCA best {row['IncrementalPCA_best']:.3f}s median "
        f"{row['IncrementalPCA_median']:.3f}s | {row['ratio_best']:.1f}x (medians {row['ratio_median']:.1f}x) | "
        f"components {acc['components']:.1e}, singular values {acc['singular_values']:.1e}")
    return row


def update_flops(d: int, k: int, n: int, reprojection: bool = True) -> float:
    """Our update: k^T B, the residual, its Gram matrix (a SYRK, d n^2), one DGKS re-projection
    when the batch lies mostly in the held span, and the rotation of [V P] to k columns."""
    return 2.0 * d * k * n * (3 if reprojection else 2) + 1.0 * d * n * n + 2.0 * d * (k + n) * k


def stacked_svd_flops(d: int, k: int, n: int) -> float:
    """LAPACK's gesdd on the (k + n + 1) x d stack with d >> m: LQ factorization (2 m^2 d),
    forming Q (2 m^2 d) and the product with the core's right vectors (2 m^2 d)."""
    m = k + n + 1
    return 6.0 * m * m * d


# ============================================================================================
# 2. where the time goes
# ============================================================================================
def _interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def breakdown(s: Setup, log=print) -> list[tuple[str, str, float, float]]:
    """The pieces of one update of each estimator at ``breakdown_d``, one thread."""
    import array_api_compat.numpy as xp
    import scipy.linalg
    from sklearn.utils.extmath import _incremental_mean_and_var, svd_flip
    from sklearn.utils.validation import validate_data

    from lowrank_online.pca import _update

    IncrementalPCA = _sklearn_ipca()
    d, k, n = s.breakdown_d, s.k, s.n
    stream = Stream(d, s, seed=1)
    ours, ref = StreamingPCA(k), IncrementalPCA(k)
    for _ in range(2):
        B = stream.batch()
        ours.partial_fit(B)
        ref.partial_fit(B)
    X = stream.batch()
    state = ours._state
    V = state.components
    be = _backend.backend_of(V, xp)

    # ours, piece by piece (the steps of lowrank_online.pca._update)
    def centred():
        m = X.mean(axis=0)
        Bc = X - (m + (m - X[0]) / (math.sqrt(n) - 1.0))
        sq = np.sum(Bc[1:] * Bc[1:], axis=0)
        delta = state.mean - m
        Bc[0] = delta
        return Bc, sq

    Bc, _ = centred()
    A = Bc.T
    comp = _linalg.complement(V, A, be)
    p = comp.coef_p.shape[0]
    core = np.block([[np.diag(np.asarray(state.singular_values)), comp.coef_q], [np.zeros((p, k)), comp.coef_p]])
    Uc, _, _ = _linalg.small_svd(core, xp)
    Uq = Uc[:, :k]
    Z = np.concatenate([Uq[:k] + comp.zp[:k] @ Uq[k:], comp.zp[k:] @ Uq[k:]], axis=0)

    # scikit-learn's, piece by piece (the steps of IncrementalPCA.partial_fit)
    def sk_stack():
        col_mean, col_var, n_total = _incremental_mean_and_var(
            X, last_mean=ref.mean_, last_variance=ref.var_, last_sample_count=np.repeat(ref.n_samples_seen_, d))
        Xc = X - np.mean(X, axis=0)
        corr = np.sqrt((ref.n_samples_seen_ / n_total[0]) * n) * (ref.mean_ - np.mean(X, axis=0))
        return np.vstack((ref.singular_values_.reshape((-1, 1)) * ref.components_, Xc, corr))

    M = sk_stack()
    U_sk, _, Vt_sk = scipy.linalg.svd(M, full_matrices=False, check_finite=False)
    fns = {
        ("StreamingPCA", "partial_fit (whole call)"): lambda: StreamingPCA.partial_fit(ours, X),
        ("StreamingPCA", "input validation (scikit-learn's validate_data, no copy)"): lambda: validate_data(
            ours, X, dtype=[np.float64, np.float32], copy=False, reset=False),
        ("StreamingPCA", "batch mean, Householder-centred rows, variance"): centred,
        ("StreamingPCA", f"complement of the {n}-column batch against V (V^T A, residual, Gram, re-projection)"):
            lambda: _linalg.complement(V, A, be),
        ("StreamingPCA", f"core SVD ({core.shape[0]} x {core.shape[1]}, float64)"): lambda: _linalg.small_svd(core, xp),
        ("StreamingPCA", f"rotation [V P] Z to {k} columns, signs"): lambda: _linalg.flip_signs(comp.tall @ Z, xp),
        ("StreamingPCA", "the pure update alone (lowrank_online.pca._update)"): lambda: _update(state, X, k, None, xp),
        ("IncrementalPCA", "partial_fit (whole call)"): lambda: IncrementalPCA.partial_fit(ref, X),
        ("IncrementalPCA", "input validation (validate_data, copy=True)"): lambda: validate_data(
            ref, X, copy=True, dtype=[np.float64, np.float32], reset=False),
        ("IncrementalPCA", f"mean, variance and the stacked {M.shape[0]} x {d} matrix"): sk_stack,
        ("IncrementalPCA", f"scipy.linalg.svd of the {M.shape[0]} x {d} stack (gesdd)"): lambda: scipy.linalg.svd(
            M, full_matrices=False, check_finite=False),
        ("IncrementalPCA", "svd_flip"): lambda: svd_flip(U_sk, Vt_sk, u_based_decision=False),
    }
    with limit_threads(1):
        times = _interleaved(fns, 3 if s.quick else 4)
    out = []
    for (who, what), ts in times.items():
        out.append((who, what, min(ts), float(np.median(ts))))
        log(f"  breakdown d={d} {who:15s} {what:80s} best {min(ts):.4f}s median {np.median(ts):.4f}s")
    return out


# ============================================================================================
# memory: a fresh process per method
# ============================================================================================
def memory_probe(spec: dict) -> dict:
    """In a fresh process: two warm-up batches, then the peak during one partial_fit."""
    s = Setup(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                 for k, v in spec["setup"].items()})
    stream = Stream(spec["d"], s)
    est = StreamingPCA(s.k) if spec["method"] == "StreamingPCA" else _sklearn_ipca()(s.k)
    for _ in range(2):
        est.partial_fit(stream.batch())
    X = stream.batch()
    how = "VmHWM"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        how, before = "ru_maxrss", None
    if before is None:
        how, before = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    est.partial_fit(X)
    after = _status_kib("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": max(after - before, 0) / 1024.0, "how": how, "batch_mib": X.nbytes / 2**20}


def measure_memory(d: int, method: str, s: Setup) -> dict | None:
    spec = {"d": d, "method": method, "setup": asdict(s)}
    env = {**os.environ, **_CHILD_ENV, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--memory-probe", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        print(f"memory probe failed for {method} at d={d}: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================================
# 3. Dask: 2,000,000 features on 2 workers, each below what one process needs
# ============================================================================================
def _dask_block(seed: int, t: int, latent: int, noise: float, dtype: str, block_info=None) -> np.ndarray:
    """Rows of batch ``t`` for one block of features, made on the worker that holds it. The
    features' loadings depend on (seed, block) only, the latent scores on (seed, batch)."""
    info = block_info[None]
    (_, n), (start, stop) = info["array-location"]
    block = info["chunk-location"][1]
    dt = np.dtype(dtype)
    loadings = np.random.default_rng([seed, 0, block]).standard_normal((latent, stop - start), dtype=dt)
    loadings *= (3.0 * 0.85 ** np.arange(latent, dtype=dt))[:, None]
    scores = np.random.default_rng([seed, 1, t]).standard_normal((n, latent), dtype=dt)
    out = scores @ loadings
    out += noise * np.random.default_rng([seed, 2, t, block]).standard_normal(out.shape, dtype=dt)
    out += dt.type(1.5)
    return out


def dask_batch(d: int, s: Setup, t: int, seed: int = 0):
    import dask.array as da

    cols = tuple(min(s.dask_rows, d - c) for c in range(0, d, s.dask_rows))
    latent, noise, dtype = s.latent, s.noise, s.dask_dtype

    # A closure, which pickle refuses and cloudpickle sends by value: the workers need not
    # import this script (the tests load it by path).
    def block(block_info=None):
        return _dask_block(seed, t, latent, noise, dtype, block_info=block_info)

    return da.map_blocks(block, chunks=((s.dask_n,), cols), dtype=dtype, meta=np.empty((0, 0), dtype))


def _worker_peak(dask_worker) -> float:
    mem = dask_worker.monitor.quantities.get("memory") if hasattr(dask_worker, "monitor") else None
    if mem:
        return float(max(mem))
    import psutil

    return float(psutil.Process().memory_info().rss)


def one_process_probe(spec: dict) -> dict:
    """The Dask stream at full size in one NumPy process: its peak resident memory, whole."""
    import dask

    s = Setup(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                 for k, v in spec["setup"].items()})
    est = StreamingPCA(s.dask_k)
    times = []
    for t in range(spec["batches"]):
        X = np.asarray(dask.compute(dask_batch(s.dask_d, s, t), scheduler="sync")[0])
        t0 = time.perf_counter()
        est.partial_fit(X)
        times.append(time.perf_counter() - t0)
        del X
    return {"peak_mib": (_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0,
            "time": float(np.median(times[1:] or times))}


def dask_section(s: Setup, log=print, client: Any = None) -> dict:
    """The Dask stream; with ``client`` (e.g. the tests' cluster) no cluster of its own is started."""
    import dask
    from dask.distributed import Client, LocalCluster

    IncrementalPCA = _sklearn_ipca()
    if __name__ != "__main__":
        # Loaded by path (the tests): the workers cannot import this module, so what it sends
        # them (the block generator, the probes) travels by value.
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    own = client is None
    if own:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=s.dask_memory,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        limit = min(client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit).values())
        est = StreamingPCA(s.dask_k)
        times = []
        for t in range(s.dask_batches):
            X = dask_batch(s.dask_d, s, t)
            t0 = time.perf_counter()
            est.partial_fit(X)
            times.append(time.perf_counter() - t0)
            log(f"  dask d={s.dask_d:,} batch {t + 1}/{s.dask_batches}: {times[-1]:.2f} s")
        peaks = client.run(_worker_peak)
        held = est._state.components
        blocks, graph = held.numblocks[0], len(held.__dask_graph__())
        top = np.asarray(est.explained_variance_ratio_.compute())[:4]
        # the same stream at dask_check_d features, against NumPy and scikit-learn
        small = StreamingPCA(s.dask_k)
        numpy_est, ref = StreamingPCA(s.dask_k), IncrementalPCA(s.dask_k)
        for t in range(s.dask_batches):
            X = dask_batch(s.dask_check_d, s, t)
            small.partial_fit(X)
            Xn = np.asarray(dask.compute(X, scheduler="sync")[0])
            numpy_est.partial_fit(Xn)
            ref.partial_fit(Xn)
        C = np.asarray(small.components_.compute(), float)
        S = np.asarray(small.singular_values_.compute(), float)
        check = {
            "vs_numpy_components": float(np.max(np.abs(C - np.asarray(numpy_est.components_, float)))),
            "vs_numpy_singular_values": float(np.max(np.abs(S - numpy_est.singular_values_)) / S[0]),
            "vs_sklearn_components": float(np.max(np.abs(C - ref.components_))),
            "vs_sklearn_singular_values": float(np.max(np.abs(S - ref.singular_values_)) / S[0]),
        }
    finally:
        if own:
            client.close()
            cluster.close()
    out = {"d": s.dask_d, "n": s.dask_n, "k": s.dask_k, "batches": s.dask_batches, "rows": s.dask_rows,
           "dtype": s.dask_dtype, "times": times, "median": float(np.median(times[1:] or times)),
           "limit": float(limit), "worker_peaks": [float(p) for p in peaks.values()], "blocks": blocks,
           "graph": graph, "top_ratio": [float(x) for x in top], "check": check, "own_cluster": own}
    log(f"  dask: median {out['median']:.2f} s per batch; worker peaks "
        f"{', '.join(f'{p / 2**30:.2f}' for p in out['worker_peaks'])} GiB (limit {limit / 2**30:.2f} GiB); "
        f"check at d={s.dask_check_d:,}: vs NumPy {check['vs_numpy_components']:.1e}, vs scikit-learn "
        f"{check['vs_sklearn_components']:.1e}")
    return out


def measure_one_process(s: Setup, batches: int = 3) -> dict | None:
    spec = {"setup": asdict(s), "batches": batches}
    env = {**os.environ, **_CHILD_ENV, "OPENBLAS_NUM_THREADS": "2", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--one-process-probe",
                           json.dumps(spec)], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        print(f"one-process probe failed: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================================
# the run and the report
# ============================================================================================
def run(s: Setup, *, memory: bool = True, dask: bool = True, client: Any = None, log=print) -> dict:
    t_start = time.perf_counter()
    import sklearn

    info = {"load_start": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "sklearn": sklearn.__version__, "lowrank_online": lowrank_online.__version__}
    for t in s.threads:
        with limit_threads(t):
            info[f"gemm{t}"] = gemm_rate(512 if s.quick else 2048, 3 if s.quick else 5)
    rows = []
    for threads in s.threads:
        log(f"[{time.perf_counter() - t_start:6.1f} s] time per partial_fit, {threads} thread(s)")
        for d in s.sizes:
            rows.append(time_stream(d, s, threads, log))
    log(f"[{time.perf_counter() - t_start:6.1f} s] where the time goes at d = {s.breakdown_d}")
    pieces = breakdown(s, log)
    mem = {}
    if memory:
        log(f"[{time.perf_counter() - t_start:6.1f} s] memory peaks (a fresh process per method)")
        for d in s.sizes:
            for method in ("StreamingPCA", "IncrementalPCA"):
                m = measure_memory(d, method, s)
                if m is not None:
                    mem[(d, method)] = m
                    log(f"  memory d={d:<6d} {method:15s} peak {m['peak_mib']:.1f} MiB ({m['how']})")
    dask_res = None
    if dask:
        try:
            import dask as _dask  # noqa: F401
            import distributed  # noqa: F401
        except ImportError:
            log("  (dask or distributed not installed: no Dask section)")
        else:
            log(f"[{time.perf_counter() - t_start:6.1f} s] Dask: d = {s.dask_d:,}")
            dask_res = dask_section(s, log, client)
            if memory:
                dask_res["one_process"] = measure_one_process(s)
    info["load_end"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - t_start
    return {"setup": s, "info": info, "rows": rows, "breakdown": pieces, "memory": mem, "dask": dask_res}


def find(rows: list[dict], d: int, threads: int) -> dict | None:
    return next((r for r in rows if r["d"] == d and r["threads"] == threads), None)


def targets(res: dict) -> list[tuple[str, bool, str]]:
    s, rows = res["setup"], res["rows"]
    out = []
    for threads in s.threads:
        parts, ok = [], True
        for d, factor in s.targets:
            r = find(rows, d, threads)
            if r is None:
                continue
            ok &= r["ratio_best"] >= factor
            parts.append(f"d={d:,}: {r['ratio_best']:.1f}x (medians {r['ratio_median']:.1f}x)")
        factor = max(f for _, f in s.targets)
        out.append((f"StreamingPCA at least {factor:g}x as fast as IncrementalPCA per partial_fit, "
                    f"{threads} thread{'s' if threads > 1 else ''}", ok, "; ".join(parts)))
    worst = max(r["acc_components"] for r in rows)
    out.append(("equal results: components within 1e-10, singular values within 1e-12 (relative)",
                worst <= 1e-10 and max(r["acc_singular_values"] for r in rows) <= 1e-12,
                f"worst component difference {worst:.1e}"))
    dk = res.get("dask")
    need = ((dk or {}).get("one_process") or {}).get("peak_mib")
    if dk and dk.get("own_cluster") and need is not None and not s.quick:
        ok = need * 2**20 > dk["limit"]
        out.append((f"Dask: d = {dk['d']:,} on 2 workers, each with a memory limit below what one process needs",
                    ok, f"limit {dk['limit'] / 2**30:.2f} GiB per worker, one process peaks at {need / 1024:.2f} GiB"))
    return out


def _fmt_t(t: float) -> str:
    return f"{t * 1e3:.0f} ms" if t < 1.0 else f"{t:.2f} s"


def _list_table(caption: str, header: list[str], body: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    for cells in [header, *body]:
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return [*lines, ""]


def table_rst(res: dict) -> str:
    s, info, rows = res["setup"], res["info"], res["rows"]
    gemm = ", ".join(f"{info[f'gemm{t}'] / 1e9:.0f} GFLOP/s with {t} thread{'s' if t > 1 else ''}" for t in s.threads)
    lines = [
        f"One run on {info['cpus']} CPU cores, float64, NumPy {info['numpy']}, scikit-learn {info['sklearn']}, "
        f"lowrank_online {info['lowrank_online']}. Measured GEMM rate: {gemm}. Load average "
        f"{info['load_start'][0]:.1f} at the start and {info['load_end'][0]:.1f} at the end: other jobs shared the "
        f"machine, so absolute times are noisy; ratios of best times are the robust figure. The run took "
        f"{info['seconds'] / 60:.1f} minutes.",
        "",
    ]
    body = []
    for r in rows:
        mo, mi = res["memory"].get((r["d"], "StreamingPCA")), res["memory"].get((r["d"], "IncrementalPCA"))
        body.append([
            f"{r['d']:,}", str(r["threads"]),
            f"{_fmt_t(r['StreamingPCA_best'])} ({_fmt_t(r['StreamingPCA_median'])})",
            f"{_fmt_t(r['IncrementalPCA_best'])} ({_fmt_t(r['IncrementalPCA_median'])})",
            f"**{r['ratio_best']:.1f}x** ({r['ratio_median']:.1f}x)",
            f"{mo['peak_mib']:.0f} / {mi['peak_mib']:.0f} MiB" if (mo and mi and r["threads"] == 1) else "--",
            f"{r['acc_components']:.0e} / {r['acc_singular_values']:.0e}",
        ])
    lines += _list_table(
        f"Time per partial_fit on the same stream: batches of {s.n} rows, n_components {s.k}; best of {s.rounds} "
        "rounds (median). Memory: peak above the held state during one partial_fit, a fresh process per method "
        f"(1 thread; the batch itself is {s.n * max(s.sizes) * 8 / 2**20:.0f} MiB at the largest d). Agreement: the "
        "largest difference of any component entry / the largest relative difference of the singular values, "
        f"after {2 + s.rounds} batches",
        ["d", "threads", "StreamingPCA", "IncrementalPCA", "speed-up", "memory (ours / scikit-learn)", "agreement"],
        body)
    if res["breakdown"]:
        d, k, n = s.breakdown_d, s.k, s.n
        ours_f, sk_f = update_flops(d, k, n), stacked_svd_flops(d, k, n)
        lines += _list_table(
            f"Where the time goes at d = {d:,}, 1 thread (best of the rounds, median in brackets). The update is "
            f"about {ours_f / 1e9:.1f} GFLOP of GEMM/SYRK (k^T B, the residual, its Gram matrix, one re-projection, "
            f"the rotation to {k} columns); the stacked SVD about {sk_f / 1e9:.1f} GFLOP in LAPACK's "
            "LQ/bidiagonalisation path",
            ["estimator", "piece", "time"],
            [[who, what, f"{_fmt_t(b)} ({_fmt_t(m)})"] for who, what, b, m in res["breakdown"]])
    dk = res.get("dask")
    if dk:
        one = dk.get("one_process") or {}
        peaks = ", ".join(f"{p / 2**30:.2f}" for p in dk["worker_peaks"])
        body = [
            ["stream", f"d = {dk['d']:,} features, {dk['batches']} batches of {dk['n']} rows, n_components {dk['k']}, "
                       f"{dk['dtype']}, features in blocks of {dk['rows']:,}"],
            ["cluster", "LocalCluster, 2 worker processes x 1 thread" + (
                f", memory limit {dk['limit'] / 2**30:.2f} GiB each" if dk["own_cluster"] else " (the caller's)")],
            ["time per partial_fit", f"{_fmt_t(dk['median'])} (median after the first; first {_fmt_t(dk['times'][0])})"],
            ["worker peak resident memory", f"{peaks} GiB"],
            ["one NumPy process, same stream", (f"peaks at {one['peak_mib'] / 1024:.2f} GiB resident, "
                                                f"{_fmt_t(one['time'])} per partial_fit (2 threads)") if one else "--"],
            ["held factor", f"{dk['blocks']} blocks on the workers, graph of {dk['graph']} keys"],
            [f"check at d = {s.dask_check_d:,}", (
                f"Dask vs NumPy: components {dk['check']['vs_numpy_components']:.0e}, singular values "
                f"{dk['check']['vs_numpy_singular_values']:.0e}; vs scikit-learn (float32): components "
                f"{dk['check']['vs_sklearn_components']:.0e}, singular values "
                f"{dk['check']['vs_sklearn_singular_values']:.0e}")],
        ]
        lines += _list_table("StreamingPCA on Dask", ["what", "figure"], body)
    lines += ["Targets of the issue:", ""]
    for text, ok, numbers in targets(res):
        lines.append(f"* **{'met' if ok else 'not met'}**: {text} ({numbers}).")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: pathlib.Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    s, rows = res["setup"], res["rows"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for threads, style in zip(s.threads, ("-", "--"), strict=False):
        sel = sorted((r for r in rows if r["threads"] == threads), key=lambda r: r["d"])
        ds = [r["d"] for r in sel]
        for name, color in (("StreamingPCA", "tab:blue"), ("IncrementalPCA", "tab:gray")):
            a1.plot(ds, [r[f"{name}_best"] for r in sel], style, marker="o", color=color,
                    label=f"{name}, {threads} thread{'s' if threads > 1 else ''}")
        a2.plot(ds, [r["ratio_best"] for r in sel], style, marker="o", color="tab:blue",
                label=f"{threads} thread{'s' if threads > 1 else ''}")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xticks(list(s.sizes), [f"{x:,}" for x in s.sizes])
        ax.minorticks_off()
        ax.set_xlabel("features d")
        ax.grid(alpha=0.3, which="both")
    a1.set_yscale("log")
    a1.set_ylabel("time per partial_fit (s), best")
    a1.set_title(f"Batches of {s.n} rows, n_components {s.k}, float64", fontsize=10)
    a1.legend(fontsize=8)
    for level, text in ((3.0, "3x target"), (5.0, "5x aim")):
        a2.axhline(level, color="tab:red" if level == 3 else "tab:orange", lw=1, ls=":")
        a2.text(s.sizes[0], level * 1.03, text, fontsize=8)
    a2.set_ylabel("IncrementalPCA time / StreamingPCA time")
    a2.set_ylim(bottom=0)
    a2.set_title("Speed-up on the same stream (equal results)", fontsize=10)
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--output-dir", default=None, help="default: docs/evidence (full) / no files (quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask section")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-process-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return None
    if args.one_process_probe:
        print(json.dumps(one_process_probe(json.loads(args.one_process_probe))))
        return None
    setup = QUICK if args.quick else FULL
    res = run(setup, memory=not args.no_memory, dask=not args.no_dask,
              log=lambda m: print(m, file=sys.stderr, flush=True))
    text = table_rst(res)
    print(text)
    publish(text, res, plot, table="streaming_pca_table.rst", figure="streaming_pca.png",
            output_dir=args.output_dir, quick=args.quick)
    return res


if __name__ == "__main__":
    main()
