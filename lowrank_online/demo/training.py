"""Training the library's MLP: first-order methods against K-FAC and its Brand-updated variants."""

from __future__ import annotations

from ..nn.experiment import RunConfig, compare, compare_table
from ._report import Section, progress, progress_shown

# Quick: scikit-learn's digits (64 inputs, a hidden layer of 128, 10 steps an epoch), seconds. Full:
# the teacher-student problem whose first layer is 1024 wide, far above rank + batch, where the
# Brand updates pay (paper 001, Sec. 3.5).
QUICK = {"data": "digits", "epochs": 4, "methods": ("sgd", "adam", "kfac", "bkfac"), "floor": 0.70,
         "targets": (0.90, 0.95)}
FULL = {"data": "teacher-student", "epochs": 2, "methods": ("sgd", "adam", "kfac", "rkfac", "bkfac", "brkfac"),
        "floor": 0.60, "targets": (0.75, 0.80)}


def section(quick: bool) -> Section:
    """``lowrank-online compare`` on one problem: the table, and every method's final accuracy."""
    plan = QUICK if quick else FULL
    config = RunConfig(plan["data"], epochs=plan["epochs"], T_brand=10, progress=progress_shown())
    methods = list(plan["methods"])
    runs = {}
    bar = progress(methods, "training")
    for m in bar:
        if hasattr(bar, "set_postfix_str"):  # name the method the inner epoch bars belong to
            bar.set_postfix_str(m)
        runs.update(compare(config, [m], seeds=1))
    out = Section("training", f"lowrank-online compare on {plan['data']}, {plan['epochs']} epoch(s), batch "
                              f"{config.batch_size}, rank {config.rank}, T_inv = T_brand = 10:")
    out.lines.extend("  " + line for line in compare_table(methods, runs, plan["targets"]).splitlines())
    acc = {m: runs[m][0].test_accuracy[-1] for m in methods}
    for m in methods:
        out.check(f"{m}: final test accuracy (chance 0.10)", acc[m], plan["floor"], ">=")
    # the Brand-updated factors track the exact ones: same accuracy up to the run's noise
    for m in methods:
        if m.startswith("b") and m[1:] in acc:
            out.check(f"{m} against {m[1:]}: |difference of final accuracies|", abs(acc[m] - acc[m[1:]]), 0.05)
    return out
