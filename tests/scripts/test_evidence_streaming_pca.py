"""The StreamingPCA evidence (evidence/streaming_pca.py) runs in quick mode and what it reports
holds at small sizes: both estimators agree to rounding, every size and thread count has a row,
the table, figure and memory probes are there; the Dask section agrees with NumPy on the Dask
tests' cluster; and examples/streaming_pca.py runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _scripts import ROOT, load_script

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    study = load_script("evidence", "streaming_pca")
    out = tmp_path_factory.mktemp("streaming_pca")
    res = study.main(["--quick", "--output-dir", str(out), "--no-dask"])
    return study, res, out


@pytest.mark.slow
def test_quick_run_agrees_with_scikit_learn_and_writes_every_row(quick):
    study, res, out = quick
    s = res["setup"]
    assert {(r["d"], r["threads"]) for r in res["rows"]} == {(d, t) for d in s.sizes for t in s.threads}
    for r in res["rows"]:
        assert r["acc_components"] < 1e-10 and r["acc_singular_values"] < 1e-12, r
        assert r["acc_orthonormality"] < 1e-12 and r["StreamingPCA_best"] > 0
    text = (out / "streaming_pca_table.rst").read_text()
    assert (out / "streaming_pca.png").stat().st_size > 0
    assert "Time per partial_fit" in text and "Where the time goes" in text and "Targets of the issue" in text
    for d in s.sizes:
        for method in ("StreamingPCA", "IncrementalPCA"):
            m = res["memory"][(d, method)]
            assert m["peak_mib"] >= 0 and m["how"] in ("VmHWM", "ru_maxrss")
    pieces = {(who, what.split(" (")[0]) for who, what, _, _ in res["breakdown"]}
    assert ("StreamingPCA", "partial_fit") in pieces and ("IncrementalPCA", "partial_fit") in pieces
    stated = [t for t, _, _ in study.targets(res)]
    assert any(t.endswith("1 thread") for t in stated) and any(t.startswith("equal results") for t in stated)


@pytest.mark.slow
def test_dask_section_agrees_with_numpy_and_scikit_learn(client):
    pytest.importorskip("dask.array")
    study = load_script("evidence", "streaming_pca")
    res = study.dask_section(study.QUICK, log=lambda m: None, client=client)
    check = res["check"]
    assert check["vs_numpy_components"] < 1e-4 and check["vs_numpy_singular_values"] < 1e-5  # float32
    assert check["vs_sklearn_components"] < 1e-3 and check["vs_sklearn_singular_values"] < 1e-5
    assert res["graph"] == res["blocks"] and len(res["times"]) == study.QUICK.dask_batches


def test_streaming_pca_example_runs():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    out = subprocess.run([sys.executable, "examples/streaming_pca.py", "--samples", "3000", "--features", "300",
                          "--batch", "500", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "identical to the uninterrupted stream: True" in out.stdout
    assert "decay=0.9" in out.stdout and "IncrementalPCA.fit" in out.stdout
