"""The tooling in benchmarks/: importable from the repository root, not installed, its flop
models equal to the products the library runs, and the bench tables' smoke runs.

The flop models are checked against a count of the products that ``eigh_update``,
``svd_update``, ``rsvd``, ``reigh`` and ``damped_solve`` actually execute: the inputs are a
NumPy subclass that records every ``matmul`` (``2 p q s`` flops for a ``p x q`` by ``q x s``
product, ``p (p + 1) q`` for a Gram matrix ``W^T W`` / ``A A^T``, which NumPy runs as SYRK),
and the products over the tall dimension are summed. No test here asserts a time.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest
from _helpers import measure as _measure

from lowrank_online import damped_solve, eigh_update, reigh, rsvd, svd_update
from lowrank_online.brand import DENSE_FRACTION
from lowrank_online.randomized import _krylov_steps, default_block_size  # the depth block Krylov takes

ROOT = pathlib.Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
def _run(*args: str, timeout: int = 300) -> str:
    # This checkout's library, whatever is installed in the environment.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_benchmarks_import_from_the_repository_root_in_a_fresh_process():
    out = _run("-c", "import benchmarks._measure, benchmarks.bench, benchmarks.bench_dask; print('ok')")
    assert out.strip() == "ok"


def test_benchmarks_are_not_part_of_the_installed_package():
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=config["include"], exclude=config.get("exclude", ()))
    assert "lowrank_online" in packages
    assert not [p for p in packages if not p.startswith("lowrank_online")]
    assert not list((ROOT / "lowrank_online").glob("bench*.py"))


def test_the_models_switch_to_the_wide_path_where_the_library_does():
    assert _measure.DENSE_FRACTION == DENSE_FRACTION


# --------------------------------------------------------------------------------------------
# flop models against the products the library runs
# --------------------------------------------------------------------------------------------
class _Counted(np.ndarray):
    """An ndarray that records the flops of every matmul it takes part in (see the module docstring)."""

    log: ClassVar[list[tuple[tuple[int, ...], tuple[int, ...], int]]] = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = [np.asarray(x) if isinstance(x, _Counted) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, _Counted) else x for x in kwargs["out"])
        if ufunc is np.matmul and method == "__call__":
            a, b = args
            gram = a.shape == b.shape[::-1] and a.ctypes.data == b.ctypes.data and a.strides == b.strides[::-1]
            p, q, s = a.shape[-2], a.shape[-1], b.shape[-1]
            _Counted.log.append((a.shape, b.shape, p * (p + 1) * q if gram else 2 * p * q * s))
        return _wrap(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))


def _plain(x):
    if isinstance(x, _Counted):
        return np.asarray(x)
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_plain(y) for y in x)
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return x.view(_Counted)
    if isinstance(x, tuple):
        items = [_wrap(y) for y in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return x


def _flops(fn, *arrays, over=None):
    """Flops of the products ``fn(*arrays)`` runs that involve a dimension in ``over`` (the tall
    sizes; the small cores are below them), or whose operand has a shape in ``over`` when it
    holds shapes."""
    _Counted.log = []
    fn(*(np.asarray(a).view(_Counted) for a in arrays))
    if all(isinstance(o, tuple) for o in over):
        return sum(f for a, b, f in _Counted.log if a in over or b in over)
    return sum(f for a, b, f in _Counted.log if set(a + b) & set(over))


def _eigh_problem(d, r, n, *, in_span=False, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, r)))
    L = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    A = rng.standard_normal((d, n))
    if in_span:  # the K-factor regime: the batch lies mostly in the held span
        A = Q @ rng.standard_normal((r, n)) + 1e-3 * A
    return L, Q, A


@pytest.mark.parametrize(("d", "r", "n"), [(200, 7, 5), (301, 20, 16), (90, 1, 1)])
def test_eigh_update_flops_equal_the_products_of_brands_path(d, r, n):
    L, Q, A = _eigh_problem(d, r, n)
    counted = _flops(lambda *x: eigh_update(*x, decay=0.95, weight=0.05), L, Q, A, over=[d])
    assert counted == _measure.eigh_update_flops(d, r, n)
    # truncated output: the rotation is to `rank` columns only
    counted = _flops(lambda *x: eigh_update(*x, decay=0.95, weight=0.05, rank=r), L, Q, A, over=[d])
    assert counted == _measure.eigh_update_flops(d, r, n, m=r)


def test_eigh_update_flops_with_the_reprojection_of_a_batch_in_the_held_span():
    d, r, n = 200, 7, 5
    L, Q, A = _eigh_problem(d, r, n, in_span=True)
    counted = _flops(lambda *x: eigh_update(*x), L, Q, A, over=[d])
    assert counted == _measure.eigh_update_flops(d, r, n, reproject=True)
    assert counted > _measure.eigh_update_flops(d, r, n)


@pytest.mark.parametrize(("d", "r", "n"), [(20, 6, 50), (12, 4, 5)])
def test_eigh_update_flops_equal_the_products_of_the_wide_path(d, r, n):
    assert r + n >= DENSE_FRACTION * d
    L, Q, A = _eigh_problem(d, r, n)
    assert _flops(lambda *x: eigh_update(*x), L, Q, A, over=[d]) == _measure.eigh_update_flops(d, r, n)


def test_eigh_update_flops_spelled_out():
    # d = 10, r = 2, n = 3 (Brand's path: r + n = 5 < 7.5), as multiply-adds of each product:
    qta = 2 * 3 * 10  # C = Q^T A: r x n entries, d each
    qc = 10 * 3 * 2  # Q C: d x n entries, r each
    gram = (3 * 4 // 2) * 10  # W^T W: n (n + 1) / 2 distinct entries, d each
    rotation = 10 * 5 * 5  # [Q W] Z: d x m entries, r + n each
    assert _measure.eigh_update_flops(10, 2, 3) == 2 * (qta + qc + gram + rotation)
    # the wide path, d = 4, r = 1, n = 6: A A^T and B B^T, d (d + 1) / 2 entries of n and r each
    assert _measure.eigh_update_flops(4, 1, 6) == 2 * (10 * 6 + 10 * 1)
    # the paper's sizes, per unit of d (the old models: 940,576, 809,504 and 922,144)
    assert _measure.eigh_update_flops(4096, 220, 256) == 744_224 * 4096
    assert _measure.eigh_update_flops(4096, 220, 256, reproject=True) == 856_864 * 4096


def test_svd_update_flops_equal_the_products_of_both_complements():
    rng = np.random.default_rng(1)
    m, d, r, n = 150, 200, 7, 5
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((d, r)))
    S = np.sort(rng.gamma(2.0, size=r))[::-1].copy()
    A, B = rng.standard_normal((m, n)), rng.standard_normal((d, n))
    counted = _flops(lambda *x: svd_update(*x), U, S, V.T.copy(), A, B, over=[m, d])
    assert counted == _measure.svd_update_flops(m, d, r, n)


def _decaying(m, n, seed=2):
    return np.random.default_rng(seed).standard_normal((m, n)) * 0.9 ** np.arange(n)


@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_rsvd_subspace_flops_equal_its_products_with_x(n_iter):
    m, n, rank, oversample = 300, 200, 10, 5
    X = _decaying(m, n)
    counted = _flops(lambda x: rsvd(x, rank, oversample=oversample, n_iter=n_iter, method="subspace", seed=0), X,
                     over=[(m, n), (n, m)])
    assert counted == _measure.rsvd_flops(m, n, rank + oversample, n_iter)


@pytest.mark.parametrize("n_iter", [None, 1, 3])
def test_block_krylov_flops_equal_their_products_with_x(n_iter):
    m, n, rank, oversample = 300, 200, 10, 5
    k = rank + oversample
    b = default_block_size(k)
    X = _decaying(m, n)
    counted = _flops(lambda x: rsvd(x, rank, oversample=oversample, n_iter=n_iter, method="block_krylov", seed=0), X,
                     over=[(m, n), (n, m)])
    assert counted == _measure.block_krylov_rsvd_flops(m, n, _krylov_steps(n_iter, k, b, min(m, n), rank, False), b)
    d = 300
    F = _decaying(d, 40)
    S = F @ F.T
    counted = _flops(lambda x: reigh(x, rank, oversample=oversample, n_iter=n_iter, method="block_krylov", seed=0), S,
                     over=[(d, d)])
    assert counted == _measure.block_krylov_reigh_flops(d, _krylov_steps(n_iter, k, b, d, rank, False), b)


@pytest.mark.parametrize("n_iter", [0, 2])
def test_reigh_subspace_flops_equal_its_products_with_x(n_iter):
    d, rank, oversample = 300, 10, 5
    F = _decaying(d, 40)
    counted = _flops(lambda x: reigh(x, rank, oversample=oversample, n_iter=n_iter, method="subspace", seed=0),
                     F @ F.T, over=[(d, d)])
    assert counted == _measure.reigh_flops(d, rank + oversample, n_iter)


def test_damped_solve_flops_equal_its_products():
    d, r, k = 200, 7, 3
    L, Q, X = _eigh_problem(d, r, k)
    assert _flops(lambda *x: damped_solve(*x, 0.1), L, Q, X, over=[d]) == _measure.damped_solve_flops(d, r, k)


def test_fisher_and_svd_compressed_models_spelled_out():
    # two GEMMs of N x d_a x d_a k and N x d_g x d_g k multiply-adds
    assert _measure.fisher_product_flops(256, 30, 20, 2) == 2 * (256 * 30 * 30 * 2 + 256 * 20 * 20 * 2)
    # 2q + 2 products with the d x cols X of k columns, plus the tall-skinny QR
    assert _measure.svd_compressed_flops(1000, 128, 74, 2) == 6 * 2 * 1000 * 128 * 74 + 4 * 1000 * 74 * 74


# --------------------------------------------------------------------------------------------
# timer and exponent (call counts, never times)
# --------------------------------------------------------------------------------------------
def test_timer_calls_warmup_then_repeat_and_best_is_at_most_median():
    calls = []
    ts = _measure.timings(lambda: calls.append(1), 4)
    assert len(calls) == 5 and len(ts) == 4 and min(ts) >= 0.0
    calls.clear()
    assert len(_measure.timings(lambda: calls.append(1), 4, warmup=False, budget=0.0)) == 1 and len(calls) == 1
    assert _measure.best_time(lambda: None, 5) <= _measure.median_time(lambda: None, 5) + 1.0


def test_fitted_exponent_recovers_a_power_law():
    ds = [100, 200, 400, 800]
    assert _measure.fitted_exponent(ds, [3e-7 * d**1.5 for d in ds]) == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------
# smoke runs of the tables (the output's shape, not its figures)
# --------------------------------------------------------------------------------------------
def test_bench_quick():
    out = _run("benchmarks/bench.py", "--quick")
    assert "fitted exponent" in out and "GEMM frac" in out and "sklearn rsvd" in out


def test_bench_quick_without_peers_as_a_module():
    out = _run("-m", "benchmarks.bench", "--quick", "--no-peers", "--repeat", "2")
    assert "GEMM frac" in out and "numpy.linalg.eigh" not in out


def test_bench_wide_quick():
    out = _run("benchmarks/bench.py", "wide", "--quick")
    assert "against the dense alternative" in out and "n = 1024 / n = 512" in out


def test_dask_bench_plot_and_stream_footprint(tmp_path):
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    figures = tmp_path / "bench.json"
    out = _run("benchmarks/bench.py", "dask", "--quick", "--ds", "20000,40000", "--batches", "2",
               "--json", str(figures))
    assert "svd_c T=2" in out and "Dask update" in out and "fitted exponent" in out
    pytest.importorskip("matplotlib")
    plot = _run("examples/dask_scaling_plot.py", "--from", str(figures), "--out", str(tmp_path / "scaling.png"))
    assert "wrote" in plot and (tmp_path / "scaling.png").stat().st_size > 0
    out = _run("benchmarks/bench_dask.py", "--stream", "30")
    assert "scheduler tasks" in out and "median" in out
