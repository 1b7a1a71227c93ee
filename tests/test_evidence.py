"""The evidence scripts run in quick mode and the qualitative findings they establish still hold."""

from __future__ import annotations

import pytest
from _scripts import load_script


def _script(name: str):
    return load_script("evidence", name)


@pytest.mark.slow
def test_kfactor_error_study_findings_hold():
    study = _script("kfactor_errors")
    res = study.run(study.QUICK)
    found = study.findings(res)
    for index in study.FINDINGS:
        text, holds, numbers = found[index]
        assert holds, f"{text}: {numbers}"
    assert set(res["average"]) == set(study.algorithms(study.QUICK))


@pytest.mark.slow
def test_optimizer_comparison_runs_and_every_method_learns(tmp_path):
    study = _script("optimizers")
    res = study.main(["--quick", "--output-dir", str(tmp_path)])
    assert (tmp_path / "optimizers_table.rst").exists()
    for data, r in res.items():
        for name in r["names"]:
            for h in r["runs"][name]:
                assert h.train_loss[-1] < h.train_loss[0], (data, name)


def test_fisher_approximation_study_findings_hold():
    study = _script("fisher_errors")
    results = study.run(study.QUICK)
    for res in results:
        found = study.findings(res)
        for text, holds, numbers in found[:2]:  # deflation best; all beat K-FAC on Error 1
            assert holds, f"{text}: {numbers}"
        assert res["errors"].shape[1:] == (len(study.METHODS), 2)
