"""lowrank_online.torch's example, evidence script, asv benchmarks and GPU check keep working."""

from __future__ import annotations

import subprocess

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from _scripts import ROOT, load_script  # noqa: E402


@pytest.mark.parametrize(
    "kw", [dict(), dict(cnn=True, optimizer=True, method="rkfac")], ids=["mlp-bkfac", "cnn-optimizer"]
)
def test_two_line_example_learns_digits(kw):
    losses, accs, pre = load_script("examples", "torch_embedding").train(epochs=2, **kw)
    assert losses[-1] < losses[0] and accs[-1] > 0.85
    assert pre.layers  # every Linear / Conv2d got curvature


def test_overhead_table_quick():
    rows = load_script("evidence", "torch_overhead").main(["--quick", "--widths", "32", "--methods", "kfac", "bkfac"])
    assert [r.method for r in rows][:3] == ["sgd", "kfac", "bkfac"]
    assert rows[0].amortised == 1.0 and all(r.amortised >= 1.0 for r in rows)
    assert any(r.model == "CNN" and r.method == "bkfac" for r in rows)  # wide patch batches: the B-update route


def test_asv_benchmarks_run_one_round():
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "asv_benchmarks"))
    try:
        mod = importlib.import_module("benchmarks.torch_kfac")
    finally:
        sys.path.remove(str(ROOT / "asv_benchmarks"))
    mod.BATCH = 16
    b = mod.TorchStatistics()
    b.setup("mc")
    b.time_forward_backward_with_capture("mc")
    b.time_forward_backward_plain("mc")
    b.teardown("mc")


def test_gpu_check_skips_cleanly_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/gpu_check.sh itself")
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "skipped" in out.stdout


def test_digits_comparison_quick():
    chosen = load_script("evidence", "torch_digits").main(["--quick", "--models", "MLP", "--epochs", "1"])
    assert {method for _, method in chosen} == {"sgd", "adam", "kfac", "bkfac", "ekfac"}
    assert all(r.test[-1] > 0.5 for rs in chosen.values() for r in rs)
