"""The main job (``python -m lowrank_online.demo``): every check has a tolerance and a verdict, the run
ends with a summary, a failing check fails the run, and a missing optional package skips its section."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from lowrank_online import demo
from lowrank_online.demo import Check, core, kronecker

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^(\d+) checks, (all within tolerance|\d+ FAILED: .+)")


@pytest.fixture(scope="module")
def quick_run():
    lines: list[str] = []
    result = demo.run(quick=True, echo=lines.append)
    return result, lines


def test_quick_run_checks_every_section_with_tolerances_and_verdicts(quick_run):
    result, lines = quick_run
    assert [s.name for s in result.sections] == list(demo.SECTIONS)
    for section in result.sections:
        if section.skipped is None:
            assert section.checks, f"section {section.name} checks nothing"
            assert section.seconds > 0
        else:
            assert "not installed" in section.skipped and "pip install" in section.skipped
    for check in result.checks:
        assert isinstance(check, Check) and check.section and check.name
        assert math.isfinite(check.tolerance) and check.relation in ("<=", ">=")
        assert check.verdict == ("ok" if check.passed else "FAILED")
        assert check.passed, check
        assert check.line() in lines  # printed with its value, tolerance and verdict
    assert len(result.checks) >= 20
    assert result.summary == f"{len(result.checks)} checks, all within tolerance" + (
        "" if all(s.skipped is None for s in result.sections) else result.summary[result.summary.index(" ("):])
    assert lines[-1] == result.summary and result.exit_code == 0


def test_quick_run_returns_the_figures_the_checks_are_about(quick_run):
    result, _ = quick_run
    checks = {(c.section, c.name): c for c in result.checks}
    assert checks[("solve", "relative difference from the dense solve")].value < 1e-12
    assert checks[("core", "orthonormality |Q^T Q - I|")].value < 1e-12
    orderings = [c for c in result.checks if c.section == "kronecker" and c.name.startswith("error(")]
    assert len(orderings) == len(kronecker.ORDERINGS) and all(c.value < 0 for c in orderings)
    dask = next(s for s in result.sections if s.name == "dask")
    if dask.skipped is None:
        # the speed line is derived from the measured times, whichever way they fall
        assert re.search(r"the cluster was (about as fast|[\d.]+x (faster|slower)) than NumPy", "\n".join(dask.lines))


def test_kronecker_errors_follow_the_theory():
    a, g = kronecker.mlp_layer_statistics((12, 10, 6), 128, layer=1)
    errs = kronecker.fisher_errors(a, g)
    for better, worse in kronecker.ORDERINGS:
        assert errs[better] <= errs[worse] + 1e-6


def test_a_failing_check_fails_the_run(monkeypatch, capsys):
    def wrong(L, Q, X, damping, **kwargs):
        return 2.0 * np.asarray(X)

    monkeypatch.setattr(core, "damped_solve", wrong)
    status = demo.main(["--quick", "--section", "solve", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED  relative difference from the dense solve" in out
    assert "1 checks, 1 FAILED: solve: relative difference from the dense solve" in out


def test_a_missing_optional_package_skips_its_section(monkeypatch):
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(
        demo.importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a)
    )
    lines: list[str] = []
    result = demo.run(["solve", "dask"], quick=True, echo=lines.append)
    skipped = result.sections[1]
    assert skipped.skipped is not None and "distributed" in skipped.skipped and not skipped.checks
    assert result.summary == "1 checks, all within tolerance (dask skipped)" and result.exit_code == 0


def test_an_import_error_inside_the_library_is_not_a_skip(monkeypatch):
    def broken(quick):
        raise ImportError("cannot import name 'eigh_update'")

    monkeypatch.setitem(demo.SECTIONS, "core", dataclasses.replace(demo.SECTIONS["core"], run=broken))
    with pytest.raises(ImportError, match="eigh_update"):
        demo.run(["core"], quick=True, echo=None)


def test_expected_duration_follows_the_options():
    quick, full = demo.expected_seconds(list(demo.SECTIONS), True), demo.expected_seconds(list(demo.SECTIONS), False)
    assert 0 < quick < 25 and quick < full <= 95


def test_threads_must_be_positive():
    with pytest.raises(SystemExit):
        demo.main(["--threads", "0"])


def test_threads_auto_limits_to_one_when_the_machine_is_oversubscribed(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(demo._threads, "check_oversubscription",
                        lambda: "2 BLAS/OpenMP threads on 2 cores with a load of 3.0: slow; pass --threads 1")
    monkeypatch.setattr(demo._threads, "limit_threads", lambda n: asked.append(n))
    assert demo.main(["--quick", "--section", "solve", "--no-progress"]) == 0
    assert asked == [1]
    assert (
        "note: 2 BLAS/OpenMP threads on 2 cores with a load of 3.0: slow; running with 1 thread"
        in capsys.readouterr().out
    )
    asked.clear()
    assert demo.main(["--quick", "--section", "solve", "--no-progress", "--threads", "2"]) == 0
    assert asked == [2]


def test_module_run_exits_zero_and_prints_a_summary():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "lowrank_online.demo", "--quick"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("expected: about ") and "(quick)" in lines[1]
    match = next(SUMMARY.match(line) for line in lines if SUMMARY.match(line))
    assert match.group(2) == "all within tolerance"
    assert lines[-1].startswith("done in ")
