"""K-factor error study of paper 001, Sec. 4.2-4.3 (Table 1, Figures 1-2), with the library's MLP.

One training run is driven by the reference: k-fac with ``T_inv = T_updt``, which always holds
the exact inverse K-factors. Next to it, the approximate algorithms (1)-(7) of Sec. 4.2 receive
exactly the same statistics every ``T_updt`` steps and precondition the same gradients (they are
"shadows" of the run). This isolates their approximation error from differences in trajectory.
Over a window of steps that starts when every algorithm performs its heavy update (the window
start is a multiple of all periods), the four metrics of Sec. 4.2 are measured on the wide first
layer:

1. ``|A~^-1 - A^-1_ref|_F / |A^-1_ref|_F`` (damped inverses, spectrum continuation for low-rank
   representations, damping ``phi * lambda_max`` of each representation);
2. the same for ``Gamma``;
3. ``|s~ - s_ref| / |s_ref|`` for the layer's preconditioned gradient (subspace step);
4. ``1 - cos angle(s~, s_ref)``.

The step metrics are averaged over each ``T_updt``-step block (the paper reports the same
average), and all metrics are averaged over seeds. The curvature time per step of each algorithm
is measured on the same statistics.

``python evidence/kfactor_errors.py`` regenerates ``docs/evidence/kfactor_errors_table.rst`` (table and
findings) and ``kfactor_errors.png`` (curves) in a few minutes on 2 CPU cores. ``--quick`` runs
a small instance in seconds; the tests run it and assert the findings recorded in
``FINDINGS``. ``--rank-probe`` runs only the follow-up on r-kfac's A error (one seed, printed):
r-kfac at more power iterations, more oversampling and full rank, next to b-kfac.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from dataclasses import dataclass

import array_api_compat.numpy as xp
import numpy as np
from _publish import publish, pyplot

from lowrank_online.curvature import KFACPreconditioner
from lowrank_online.nn import MLP, SGD, SoftmaxCrossEntropy, load_dataset
from lowrank_online.nn.data import batches

METRICS = ("inverse A", "inverse Gamma", "step norm", "step angle")


@dataclass(frozen=True)
class Setup:
    data: str
    hidden: int
    batch: int
    rank: int
    T_updt: int
    heavy: int  # paper's 50 (RSVD overwrite, correction, r-kfac/k-fac T_inv)
    long: int  # paper's 300 ("no reset" r-kfac)
    window: int  # paper's 300 steps
    warmup_epochs: int
    seeds: int
    lr: float = 0.1
    damping: float = 0.1
    data_kwargs: tuple = ()


FULL = Setup("teacher-student", hidden=256, batch=128, rank=64, T_updt=10, heavy=50, long=300, window=300,
             warmup_epochs=3, seeds=3)
QUICK = Setup("teacher-student", hidden=96, batch=32, rank=24, T_updt=5, heavy=25, long=100, window=100,
              warmup_epochs=1, seeds=1, data_kwargs=(("n_train", 1024), ("n_test", 256), ("d_in", 400)))


def paper_b_ranks(s: Setup) -> dict[str, int]:
    """The paper's B-methods truncate to r before each update and apply all r + n held
    eigenpairs (Alg. 4): ``held_rank=r``, ``rank=r + n`` in the preconditioner's terms."""
    return {"held_rank": s.rank, "rank": s.rank + s.batch}


def algorithms(s: Setup) -> dict[str, dict]:
    """Paper 001, Sec. 4.2, algorithms (1)-(7), with the periods scaled to the run."""
    b = paper_b_ranks(s)
    return {
        "b-kfac": {"method": "bkfac", "T_brand": s.T_updt, **b},
        "b-r-kfac": {"method": "brkfac", "T_brand": s.T_updt, "T_rsvd": s.heavy, **b},
        "b-kfac-c": {"method": "bkfacc", "T_brand": s.T_updt, "T_corct": s.heavy, "phi_crc": 0.5, **b},
        f"r-kfac T_inv={s.heavy}": {"method": "rkfac", "T_inv": s.heavy},
        f"r-kfac T_inv={s.T_updt}": {"method": "rkfac", "T_inv": s.T_updt},
        f"r-kfac T_inv={s.long}": {"method": "rkfac", "T_inv": s.long},
        f"k-fac T_inv={s.heavy}": {"method": "kfac", "T_inv": s.heavy},
    }


def _damped_inverse(info, side: str, lam: float, continuation: bool) -> np.ndarray:
    """Dense damped inverse of the representation ``info`` (a ``layer_state``) applies on ``side``."""
    factor, r = getattr(info.state, side), info.applied_rank[side]
    L, Q = np.asarray(factor.eigenvalues)[:r], np.asarray(factor.eigenvectors)[:, :r]
    d = Q.shape[0]
    if continuation and L.shape[0] < d and L.shape[0]:
        lam, L = lam + L[-1], L - L[-1]
    return (Q * (1.0 / (L + lam) - 1.0 / lam)) @ Q.T + np.eye(d) / lam


def run_seed(s: Setup, seed: int, algos: dict[str, dict] | None = None,
             at_end=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Errors (algorithm -> array of shape (window, 4)) and curvature seconds per step.

    ``algos`` replaces :func:`algorithms` (name -> preconditioner options); ``at_end(ref,
    shadows, layer)`` is called with the reference, the shadow preconditioners and the name of
    the measured layer after the window.
    """
    data = load_dataset(s.data, seed=0, **dict(s.data_kwargs)).to(xp)
    net = MLP([data.n_features, s.hidden, data.n_classes], seed=seed)
    loss = SoftmaxCrossEntropy()
    opt = SGD(lr=s.lr, momentum=0.0, weight_decay=1e-4)
    common = {"rank": s.rank, "damping": s.damping, "T_updt": s.T_updt, "seed": seed}
    ref = KFACPreconditioner("kfac", T_inv=s.T_updt, **common)
    shadows = {name: KFACPreconditioner(cfg.pop("method"), **{**common, **cfg})
               for name, cfg in ((n, dict(c)) for n, c in (algos or algorithms(s)).items())}
    names = net.layer_names
    n = data.X_train.shape[0]
    per_epoch = n // s.batch
    # the window opens at the first step after the warm-up that is a multiple of every period
    lcm = int(np.lcm.reduce([s.T_updt, s.heavy, s.long]))
    start = -(-(s.warmup_epochs * per_epoch) // lcm) * lcm
    total = start + s.window
    errors = {name: np.zeros((s.window, 4)) for name in shadows}
    spent = {name: 0.0 for name in shadows}
    step, epoch = 0, 0
    while step < total:
        for idx in batches(n, s.batch, epoch, seed):
            if step >= total:
                break
            sel = xp.asarray(idx)
            Xb, yb = xp.take(data.X_train, sel, axis=0), xp.take(data.y_train, sel, axis=0)
            z = net.forward(Xb)
            stats = net.backward(loss.gradient(z, yb, xp))
            grads = [st.grad for st in stats]
            collect = ref.wants_statistics()
            if collect:
                sampled = loss.sample(z, np.random.default_rng([seed, step]), xp)
                fstats = net.backward(loss.gradient(z, sampled, xp))
                for name, st in zip(names, fstats, strict=True):
                    ref.update(name, st.a, st.g)
            s_ref = ref.precondition(names[0], grads[0])
            in_window = step >= start
            if in_window and collect:
                ref_layer = ref.layer_state(names[0])
                lam_ref = ref.dampings(names[0])
                inv_ref = [_damped_inverse(ref_layer, side, lam_ref[i], False) for i, side in enumerate(("A", "G"))]
            for name, pre in shadows.items():
                t0 = time.perf_counter()
                if collect:
                    for lname, st in zip(names, fstats, strict=True):
                        pre.update(lname, st.a, st.g)
                s_alg = pre.precondition(names[0], grads[0])
                spent[name] += time.perf_counter() - t0
                if in_window:
                    row = errors[name][step - start]
                    if collect:
                        layer = pre.layer_state(names[0])
                        lam = pre.dampings(names[0])
                        for i, side in enumerate(("A", "G")):
                            inv = _damped_inverse(layer, side, lam[i], True)
                            row[i] = np.linalg.norm(inv - inv_ref[i]) / np.linalg.norm(inv_ref[i])
                    else:
                        row[:2] = errors[name][step - start - 1][:2]
                    row[2] = np.linalg.norm(s_alg - s_ref) / np.linalg.norm(s_ref)
                    row[3] = 1.0 - float(np.sum(s_alg * s_ref) / (np.linalg.norm(s_alg) * np.linalg.norm(s_ref)))
                pre.step()
            directions = [s_ref] + [ref.precondition(nm, g) for nm, g in zip(names[1:], grads[1:], strict=True)]
            opt.step(net, ref.clip(directions, grads, opt.lr))
            ref.step()
            step += 1
        epoch += 1
    if at_end is not None:
        at_end(ref, shadows, names[0])
    # step metrics: the paper's average over each T_updt block of samples
    for err in errors.values():
        for b in range(0, s.window, s.T_updt):
            err[b : b + s.T_updt, 2:] = err[b : b + s.T_updt, 2:].mean(axis=0)
    return errors, {k: v / total for k, v in spent.items()}


def run(s: Setup) -> dict:
    curves, times = {}, {}
    for seed in range(s.seeds):
        errs, spent = run_seed(s, seed)
        for name, e in errs.items():
            curves.setdefault(name, []).append(e)
            times.setdefault(name, []).append(spent[name])
    mean_curves = {k: np.mean(v, axis=0) for k, v in curves.items()}
    return {
        "setup": s,
        "curves": mean_curves,
        "average": {k: v.mean(axis=0) for k, v in mean_curves.items()},
        "time": {k: (float(np.mean(v)), float(np.std(v))) for k, v in times.items()},
    }


def findings(res: dict) -> list[tuple[str, bool, str]]:
    """The paper's qualitative findings (Sec. 4.3), each with whether it holds here and the numbers."""
    s, avg, curves = res["setup"], res["average"], res["curves"]
    heavy, long = f"r-kfac T_inv={s.heavy}", f"r-kfac T_inv={s.long}"
    out = []
    brk, rk = avg["b-r-kfac"], avg[heavy]
    out.append((f"b-r-kfac beats r-kfac T_inv={s.heavy} on all four metrics", bool(np.all(brk < rk)),
                ", ".join(f"{m}: {a:.3g} vs {b:.3g}" for m, a, b in zip(METRICS, brk, rk, strict=True))))
    bk, bc = avg["b-kfac"], avg["b-kfac-c"]
    between = [(min(x, y) <= c <= max(x, y)) for x, y, c in zip(bk, brk, bc, strict=True)]
    out.append(
        (
            "b-kfac-c lies between b-kfac and b-r-kfac",
            all(between),
            ", ".join(
                f"{m}: {c:.3g} in [{min(x, y):.3g}, {max(x, y):.3g}]"
                for m, x, y, c in zip(METRICS, bk, brk, bc, strict=True)
            ),
        )
    )
    # On the wide A factor the two errors agree to three digits here: a tie (within 0.1%) is
    # said as such, and the finding needs no metric worse and at least one better.
    tie = np.abs(brk - bk) <= 1e-3 * bk
    out.append(("b-r-kfac is at least as good as b-kfac on all four metrics and better on one",
                bool(np.all((brk < bk) | tie) and np.any(~tie)),
                ", ".join(f"{m}: {a:.4g} vs {b:.4g}{' (tie)' if t else ''}"
                          for m, a, b, t in zip(METRICS, brk, bk, tie, strict=True))))
    # "no reset" r-kfac: error grows past b-kfac's steady state (step metrics, second half)
    half = s.window // 2
    late_r = curves[long][half:, 2:].mean(axis=0)
    late_b = curves["b-kfac"][half:, 2:].mean(axis=0)
    early_r = curves[long][: s.T_updt, 2:].mean(axis=0)
    out.append((f"r-kfac T_inv={s.long} (no reset) grows past b-kfac's steady state (step metrics)",
                bool(np.all(late_r > late_b) and np.all(late_r > early_r)),
                f"second-half step error {late_r[0]:.3g} vs b-kfac {late_b[0]:.3g} (first block {early_r[0]:.3g}); "
                f"angle {late_r[1]:.3g} vs {late_b[1]:.3g}"))
    kf, rk = avg[f"k-fac T_inv={s.heavy}"], avg[heavy]
    out.append((f"r-kfac T_inv={s.heavy} is only mildly worse than k-fac T_inv={s.heavy}",
                bool(np.all(rk >= kf * 0.999) and np.all(rk <= 3 * kf + 1e-12)),
                ", ".join(f"{m}: {a:.3g} vs {b:.3g}" for m, a, b in zip(METRICS, rk, kf, strict=True))))
    return out


# Findings asserted by the quick-mode test: the ones that hold in both the quick and the full
# setups on this problem (the full run also satisfies finding 0; see docs/evidence.rst).
FINDINGS = (2, 3)


def table_rst(res: dict) -> str:
    s = res["setup"]
    lines = [
        f"Setup: {s.data}, MLP {s.hidden} hidden units, batch {s.batch}, rank {s.rank}, new K-factor data every "
        f"T_updt = {s.T_updt} steps, window of {s.window} steps after {s.warmup_epochs} epoch(s) of warm-up, "
        f"{s.seeds} seed(s), damping 0.1 lambda_max, spectrum continuation for low-rank representations.",
        "",
        ".. list-table:: Average error metrics over the window (mean over seeds) and curvature time per step",
        "   :header-rows: 1",
        "",
        "   * - algorithm",
        *[f"     - {m}" for m in ("err. A^-1", "err. Gamma^-1", "step error", "1 - cos", "ms/step (mean ± sd)")],
    ]
    for name, avg in res["average"].items():
        t, sd = res["time"][name]
        lines.append(f"   * - {name}")
        lines.extend(f"     - {v:.3g}" for v in avg)
        lines.append(f"     - {1e3 * t:.2f} ± {1e3 * sd:.2f}")
    lines += ["", "Findings of paper 001, Sec. 4.3, checked on this problem:", ""]
    for text, holds, numbers in findings(res):
        lines.append(f"* **{'holds' if holds else 'does not hold'}**: {text} ({numbers}).")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: pathlib.Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, i, title in zip(axes.ravel(), range(4), METRICS, strict=True):
        for name, curve in res["curves"].items():
            ax.plot(curve[:, i], label=name, lw=1.3)
        ax.set_yscale("log")
        # exact resets (k-fac at its T_inv) reach rounding level; keep the scale readable
        floor = min(float(np.mean(c[:, i])) for c in res["curves"].values())
        ax.set_ylim(bottom=max(floor / 10, 1e-8))
        ax.set_title(f"({i + 1}) {title}")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step in window")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("K-factor error study (paper 001, Sec. 4.2), wide first layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def rank_probe(s: Setup, seed: int = 0) -> list[dict]:
    """Why r-kfac's A error is what it is: its rank, not its randomized EVD.

    One seed of the study with b-kfac next to r-kfac (T_inv = ``heavy``) at more power
    iterations, more oversampling and full rank. For each: the mean of the four metrics over
    the window, and the rank and last eigenvalue of the A representation it applies at the end
    (spectrum continuation fills the tail with that eigenvalue).
    """
    algos = {"b-kfac": {"method": "bkfac", "T_brand": s.T_updt, **paper_b_ranks(s)},
             f"b-kfac applied rank {s.rank}": {"method": "bkfac", "T_brand": s.T_updt, "held_rank": s.rank}}
    for label, extra in (("n_iter=4", {}), ("n_iter=8", {"n_iter": 8}), ("n_iter=16", {"n_iter": 16}),
                         ("oversample=64", {"oversample": 64}), ("full rank", {"rank": 10**6})):
        algos[f"r-kfac T_inv={s.heavy} {label}"] = {"method": "rkfac", "T_inv": s.heavy, **extra}
    held = {}

    def inspect(ref, shadows, layer):
        for name, pre in shadows.items():
            info = pre.layer_state(layer)
            r = info.applied_rank["A"]
            held[name] = (r, float(np.asarray(info.state.A.eigenvalues)[r - 1]))

    errors, _ = run_seed(s, seed, algos, inspect)
    return [{"name": name, "metrics": errors[name].mean(axis=0), "rank": held[name][0], "last": held[name][1]}
            for name in algos]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default=None, help="default: docs/evidence (full) / no files (quick)")
    parser.add_argument("--rank-probe", action="store_true",
                        help="only the follow-up on r-kfac's A error (one seed, printed, nothing written)")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    if args.rank_probe:
        rows = rank_probe(setup)
        print(f"{'algorithm':36s} " + " ".join(f"{m:>13s}" for m in METRICS) + "  applied rank, last eigenvalue of A")
        for row in rows:
            print(f"{row['name']:36s} " + " ".join(f"{v:13.4g}" for v in row["metrics"])
                  + f"  {row['rank']:4d}, {row['last']:.3g}")
        return {"rank_probe": rows}
    res = run(setup)
    text = table_rst(res)
    print(text)
    publish(text, res, plot, table="kfactor_errors_table.rst", figure="kfactor_errors.png",
            output_dir=args.output_dir, quick=args.quick)
    print(f"[{time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
