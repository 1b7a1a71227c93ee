"""Stability of every curvature method on the PyTorch digits example, with and without the damping options.

``examples/torch_embedding.py`` trains a 64-128-10 ReLU network on scikit-learn's digits
(batch 64, lr 0.1, KL-clipping 1e-2, rank 32, ``T_inv = 5``, relative damping 0.1, Monte Carlo
Fisher). This script runs it for every method of
:data:`lowrank_online.curvature.METHODS`, several seeds and epochs, under damping
configurations:

* ``defaults``: relative damping 0.1 only (paper 001, Sec. 6);
* ``gradient floor``: ``gradient_damping=0.1`` (each layer's dampings multiply to at least
  ``0.1 |grad|^2``);
* ``lm``: Levenberg-Marquardt adaptation of the damping (``damping_adaptation="lm"``);
* ``floor + lm``: both.

For each run it records the per-epoch training loss and reports, per method and
configuration (worst over seeds): the final loss relative to the first epoch's (the issue
tracker's criterion: above 1 means the run ended worse than it started), the largest rebound
``max_e loss_e / min_{e' < e} loss_{e'}`` (a spike: the loss rising back above its best by that
factor), and the mean final test accuracy.

``python evidence/stability.py`` regenerates ``docs/evidence/stability_table.rst`` and
``stability.png`` (several minutes on 2 CPU cores); ``--quick`` runs a small instance.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

import numpy as np
from _publish import publish, pyplot

from lowrank_online.curvature import METHODS

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "torch_embedding.py"
CONFIGS = {
    "defaults": {},
    "gradient floor": {"gradient_damping": 0.1},
    "lm": {"damping_adaptation": "lm"},
    "floor + lm": {"gradient_damping": 0.1, "damping_adaptation": "lm"},
}
FULL = {"methods": METHODS, "configs": tuple(CONFIGS), "seeds": 3, "epochs": 10}
QUICK = {"methods": ("kfac", "ekfac-ra"), "configs": ("defaults", "floor + lm"), "seeds": 1, "epochs": 2}


def _example():
    spec = importlib.util.spec_from_file_location("torch_embedding", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rebound(losses: list[float]) -> float:
    """``max_e loss_e / min_{e' < e} loss_{e'}`` (1 for a loss that never rises above its best)."""
    best, worst = losses[0], 1.0
    for value in losses[1:]:
        worst = max(worst, value / best)
        best = min(best, value)
    return worst


def run(plan: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    example = _example()
    out = {}
    for method in plan["methods"]:
        for config in plan["configs"]:
            rows = []
            for seed in range(plan["seeds"]):
                losses, accs, _ = example.train(method, epochs=plan["epochs"], seed=seed, **CONFIGS[config])
                rows.append((losses, accs[-1]))
            out[method, config] = rows
            print(f"  {method:<15} {config:<15} " + "  ".join(f"{r[0][-1]:.3g}" for r in rows), file=sys.stderr)
    return {"plan": plan, "runs": out}


def summary(res: dict) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(method, config) -> (worst final / first loss, worst rebound, mean final accuracy)."""
    return {key: (max(r[0][-1] / r[0][0] for r in rows), max(rebound(r[0]) for r in rows),
                  float(np.mean([r[1] for r in rows])))
            for key, rows in res["runs"].items()}


def table_rst(res: dict) -> str:
    plan, summ = res["plan"], summary(res)
    configs = plan["configs"]
    head = f"{'method':<15}" + "".join(f" {c + ': end/first, rebound, acc':>40}" for c in configs)
    lines = [f"``python evidence/stability.py``: {plan['seeds']} seeds x {plan['epochs']} epochs; worst over seeds "
             "for the loss ratios, mean for the accuracy.", "", "::", "", "    " + head]
    for method in plan["methods"]:
        cells = "".join(f" {f'{e:.3g}, {b:.3g}, {a:.3f}':>40}" for e, b, a in (summ[method, c] for c in configs))
        lines.append("    " + f"{method:<15}" + cells)
    return "\n".join(lines) + "\n"


def plot(res: dict, path: pathlib.Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    plan = res["plan"]
    configs = plan["configs"]
    fig, axes = plt.subplots(1, len(configs), figsize=(5 * len(configs), 4), sharey=True, squeeze=False)
    for ax, config in zip(axes[0], configs, strict=True):
        for method in plan["methods"]:
            curves = np.array([r[0] for r in res["runs"][method, config]])
            ax.plot(np.arange(1, curves.shape[1] + 1), curves.max(axis=0), label=method, lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{config} (worst seed)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[0][-1].legend(fontsize=7, ncol=2)
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
    res = run(QUICK if args.quick else FULL)
    text = table_rst(res)
    print(text)
    publish(text, res, plot, table="stability_table.rst", figure="stability.png",
            output_dir=args.output_dir, quick=args.quick)
    print(f"[{time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
