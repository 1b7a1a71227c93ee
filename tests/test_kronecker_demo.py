"""The Kronecker section of the main demo and the Fisher-errors example keep working."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from lowrank_online.kronecker._demo import report

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_report_is_short_and_consistent():
    text = report(quick=True)
    lines = text.splitlines()
    assert 4 <= len(lines) <= 12
    assert "K-FAC" in text and "KPSVD" in text and "EKFAC" in text and "matrix-free" in text
    errors = {}
    for line in lines[1:3]:
        parts = line.split()
        errors.update({parts[i]: float(parts[i + 1]) for i in range(0, len(parts), 2)})
    # the orderings the theory guarantees
    assert errors["KPSVD"] <= errors["K-FAC"] and errors["EKFAC"] <= errors["K-FAC"]
    assert errors["Lanczos"] <= errors["KPSVD"] and errors["KFAC-corrected"] <= errors["K-FAC"]


def test_fisher_approximation_errors_example(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "errors.png"
    proc = subprocess.run(
        [sys.executable, "examples/fisher_approximation_errors.py", "--sizes", "12,10,6", "--batch", "128",
         "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Error 1" in proc.stdout and "Lanczos" in proc.stdout
    assert out.stat().st_size > 1000
