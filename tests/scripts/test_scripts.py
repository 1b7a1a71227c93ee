"""The README's commands and the examples keep working (the main-job demo: tests/test_demo.py;
the bench tables: test_bench_scripts.py; the evidence scripts: test_evidence*.py, all in this
folder but the demo's)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 300) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_readme_starts_with_exactly_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None and text.index(block.group(0)) < 40
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "lowrank_online.demo" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_fisher_approximation_errors_example(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "errors.png"
    proc = subprocess.run(
        [sys.executable, "examples/fisher_approximation_errors.py", "--sizes", "12,10,6", "--batch", "128",
         "--output", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Error 1" in proc.stdout and "Lanczos" in proc.stdout
    assert out.stat().st_size > 1000


def test_streaming_covariance_example():
    out = _run("examples/streaming_covariance.py", "--dim", "200", "--steps", "30", "--rank", "10")
    assert "B-update err" in out


def test_top_singular_triplets_example():
    out = _run("examples/top_singular_triplets.py", "--n", "300", "--k", "5")
    assert "blocks of 8" in out and "single vectors" in out


def test_cli_train_save_resume_and_compare(tmp_path):
    ckpt = str(tmp_path / "run.npz")
    out = _run("-m", "lowrank_online.cli", "train", "--data", "digits", "--epochs", "1", "--method", "bkfac",
               "--no-progress", "--save", ckpt)
    assert "final test accuracy" in out and "curvature work" in out
    out = _run("-m", "lowrank_online.cli", "train", "--data", "digits", "--epochs", "2", "--method", "bkfac",
               "--no-progress", "--resume", ckpt)
    lines = [line for line in out.splitlines() if line.strip().startswith("2 ")]
    assert lines, out  # resumed at epoch 2
    out = _run("-m", "lowrank_online.cli", "compare", "--data", "digits", "--epochs", "1",
               "--methods", "sgd,kfac,bkfac", "--no-progress", "--quiet")
    assert "t_epoch" in out and "bkfac" in out


def test_cli_rejects_unknown_methods():
    res = subprocess.run([sys.executable, "-m", "lowrank_online.cli", "compare", "--methods", "sgd,nope"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "unknown method" in (res.stderr + res.stdout)


def test_torch_embedding_example_runs():
    out = _run("examples/torch_embedding.py", "--epochs", "1")
    assert "test accuracy" in out and "Tensor" in out


def test_dask_streaming_pca_example():
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    out = _run("examples/dask_streaming_pca.py", "--features", "20000", "--batches", "3", "--rows", "5000",
               "--check-features", "4000", "--memory-limit", "1GiB")
    assert "exact check" in out and "max relative error" in out
