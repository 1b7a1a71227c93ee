"""Optimisation comparison in the spirit of paper 001 Table 2 / paper 002 Fig. 2.

SGD with momentum, Adam and the curvature methods train the library's MLP on the bundled digits
and on the wide-first-layer teacher-student problem. Each method runs over several seeds with
the same seeds, and the script reports, as mean ± sd over seeds: the time to each target test
accuracy, the time per epoch, the curvature time per epoch, the epochs to the first target and
the final accuracy. A figure plots test accuracy against wall time.

``python evidence/optimizers.py`` regenerates ``docs/evidence/optimizers_table.rst`` and
``optimizers.png`` (several minutes on 2 CPU cores); ``--quick`` runs a small instance.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
from _publish import publish, pyplot

from lowrank_online.nn.experiment import RunConfig, compare, compare_table

KFAC_FAMILY = ["kfac", "rkfac", "bkfac", "brkfac", "bkfacc"]
EXTRA = ["ekfac", "tkfac", "kpsvd"]

FULL = {
    "digits": {"epochs": 8, "seeds": 3, "targets": [0.95, 0.97], "config": {"batch_size": 64}},
    "teacher-student": {"epochs": 5, "seeds": 3, "targets": [0.80, 0.85],
                        "config": {"batch_size": 128, "T_brand": 10, "T_inv": 10}},
}
QUICK = {"digits": {"epochs": 2, "seeds": 1, "targets": [0.90, 0.95], "config": {"batch_size": 64}}}


def methods(quick: bool) -> list[str]:
    return ["sgd", "kfac", "bkfac"] if quick else ["sgd", "adam", *KFAC_FAMILY, *EXTRA]


def _command(data: str, cfg: dict, names: list[str]) -> str:
    """The ``lowrank-online compare`` command line of a run, for the table's caption."""
    flags = {"batch_size": "--batch-size", "T_brand": "--T-brand", "T_inv": "--T-inv"}
    extra = " ".join(f"{flags[k]} {v}" for k, v in cfg["config"].items())
    return (f"compare --data {data} --epochs {cfg['epochs']} --seeds {cfg['seeds']} {extra} "
            f"--methods {','.join(names)} --no-progress --quiet")


def run(quick: bool) -> dict:
    plan = QUICK if quick else FULL
    out = {}
    for data, cfg in plan.items():
        names = methods(quick)
        config = RunConfig(data, epochs=cfg["epochs"], **cfg["config"])
        runs = compare(config, names, cfg["seeds"])
        out[data] = {"names": names, "runs": runs, "targets": cfg["targets"], "config": _command(data, cfg, names)}
    return out


def table_rst(res: dict) -> str:
    lines = []
    for data, r in res.items():
        lines += [f"{data}", "^" * len(data), "", f"``lowrank-online {r['config']}``", "", "::", ""]
        lines += ["    " + line for line in compare_table(r["names"], r["runs"], r["targets"]).splitlines()]
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: pathlib.Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(res), figsize=(6 * len(res), 4.2), squeeze=False)
    for ax, (data, r) in zip(axes[0], res.items(), strict=True):
        for name in r["names"]:
            hs = r["runs"][name]
            wall = np.mean([h.wall for h in hs], axis=0)
            acc = np.mean([h.test_accuracy for h in hs], axis=0)
            ax.plot(wall, acc, marker="o", ms=3, label=name)
        ax.set_title(data)
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("test accuracy")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.quick)
    text = table_rst(res)
    print(text)
    publish(text, res, plot, table="optimizers_table.rst", figure="optimizers.png",
            output_dir=args.output_dir, quick=args.quick)
    print(f"[{time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
