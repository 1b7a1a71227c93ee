"""Command line: ``lowrank-online train`` and ``lowrank-online compare``.

``train`` fits the library's MLP with one method and prints, per epoch, the losses, the test
accuracy, the time per epoch and the time spent in curvature work. ``compare`` runs several
methods with the same seeds and prints a table like Table 2 of paper 001: time to each
target accuracy, time per epoch, epochs to target and final accuracy (mean ± sd over seeds).
Data: ``digits`` (scikit-learn's bundled digits) or ``teacher-student`` (synthetic, wide first
layer). ``--device cuda`` trains on CuPy, in float32 by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from .curvature import METHODS, KFACPreconditioner

# Sensible per-method defaults (paper 001, Sec. 6 uses no momentum and KL-clipping 0.07).
_DEFAULTS = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 1e-3},
    "curvature": {"lr": 0.1, "momentum": 0.0, "kl_clip": 1e-2},
}
_ARCHITECTURES = {"digits": [128], "teacher-student": [256]}


def _namespace(device: str) -> tuple[Any, Any]:
    if device == "cpu":
        import array_api_compat.numpy as xp

        return xp, None
    if device == "cuda":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device")
        except Exception as err:  # no cupy, no driver or no device
            raise SystemExit(f"--device cuda needs CuPy and a CUDA device ({err})") from None
        import array_api_compat.cupy as xp

        return xp, None
    raise SystemExit(f"unknown --device {device!r}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="teacher-student", choices=["digits", "teacher-student"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, nargs="*", default=None, help="hidden widths (default per dataset)")
    p.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: float64 on cpu, float32 on cuda")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--damping", type=float, default=0.1, help="phi of lambda = phi * lambda_max (or gamma with --damping-mode pi)")
    p.add_argument("--damping-mode", default="relative", choices=["relative", "pi", "absolute"])
    p.add_argument("--gradient-damping", type=float, default=0.0,
                   help="gradient floor c: each layer's dampings multiply to at least c |grad|^2 (0: off)")
    p.add_argument("--damping-adaptation", default="none", choices=["none", "lm"],
                   help="lm: Levenberg-Marquardt adaptation of the damping from each step's loss change")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--oversample", type=int, default=10)
    p.add_argument("--decay", type=float, default=0.95)
    p.add_argument("--T-updt", type=int, default=1)
    p.add_argument("--T-inv", type=int, default=10)
    p.add_argument("--T-brand", type=int, default=1)
    p.add_argument("--T-rsvd", type=int, default=10)
    p.add_argument("--T-corct", type=int, default=10)
    p.add_argument("--phi-crc", type=float, default=0.5)
    p.add_argument("--kl-clip", type=float, default=None)
    p.add_argument("--fisher", default="mc", choices=["mc", "empirical"])
    p.add_argument("--factored", action="store_true", help="linear-time application (paper 001, Alg. 8)")
    p.add_argument("--no-continuation", action="store_true")
    p.add_argument("--target-accuracy", type=float, nargs="*", default=None)
    p.add_argument("--no-progress", action="store_true")


def _build(args: argparse.Namespace, method: str, seed: int) -> tuple[Any, ...]:
    from .nn import MLP, Adam, SGD, load_dataset

    xp, device = _namespace(args.device)
    dtype = args.dtype or ("float64" if args.device == "cpu" else "float32")
    data = load_dataset(args.data, seed=0).to(xp, device, dtype)
    hidden = args.hidden if args.hidden is not None else _ARCHITECTURES[args.data]
    model = MLP([data.n_features, *hidden, data.n_classes], activation=args.activation, seed=seed,
                xp=xp, device=device, dtype=dtype)
    family = method if method in ("sgd", "adam") else "curvature"
    defaults = _DEFAULTS[family]
    lr = args.lr if args.lr is not None else defaults["lr"]
    if method == "adam":
        optimizer = Adam(lr=lr, weight_decay=args.weight_decay)
    else:
        momentum = args.momentum if args.momentum is not None else defaults["momentum"]
        optimizer = SGD(lr=lr, momentum=momentum, weight_decay=args.weight_decay)
    pre = None
    if family == "curvature":
        pre = KFACPreconditioner(
            method, decay=args.decay, damping=args.damping, damping_mode=args.damping_mode,
            gradient_damping=args.gradient_damping,
            damping_adaptation=None if args.damping_adaptation == "none" else args.damping_adaptation,
            continuation=not args.no_continuation, rank=args.rank, oversample=args.oversample,
            T_updt=args.T_updt, T_inv=args.T_inv, T_brand=args.T_brand, T_rsvd=args.T_rsvd,
            T_corct=args.T_corct, phi_crc=args.phi_crc,
            kl_clip=args.kl_clip if args.kl_clip is not None else defaults["kl_clip"], seed=seed,
        )
    return data, model, optimizer, pre


def _methods() -> list[str]:
    return ["sgd", "adam", *METHODS]


def cmd_train(args: argparse.Namespace) -> int:
    from .nn import load_training_state, save_training_state, train

    data, model, optimizer, pre = _build(args, args.method, args.seed)
    start = 0
    if args.resume:
        start, _ = load_training_state(args.resume, model, optimizer, pre)
    print(f"{args.method} on {data.name}: {model.sizes}, {model.n_parameters} parameters, "
          f"{data.X_train.shape[0]} train / {data.X_test.shape[0]} test, device {args.device}")
    print(f"{'epoch':>5} {'train loss':>11} {'test loss':>10} {'test acc':>9} {'epoch s':>8} {'curv. s':>8}")
    hist = None
    for epoch in range(start, args.epochs):
        hist = train(model, data, optimizer=optimizer, preconditioner=pre, epochs=epoch + 1, start_epoch=epoch,
                     batch_size=args.batch_size, fisher=args.fisher, factored=args.factored, seed=args.seed,
                     label=args.method, progress=not args.no_progress, history=hist)
        print(f"{hist.epoch[-1]:>5} {hist.train_loss[-1]:>11.4f} {hist.test_loss[-1]:>10.4f} "
              f"{hist.test_accuracy[-1]:>9.4f} {hist.epoch_time[-1]:>8.2f} {hist.curvature_time[-1]:>8.2f}")
    if hist is not None:
        total, curv = sum(hist.epoch_time), sum(hist.curvature_time)
        print(f"final test accuracy {hist.test_accuracy[-1]:.4f}; {total / len(hist.epoch):.2f} s per epoch, "
              f"{curv:.2f} s of {total:.2f} s in curvature work")
    if args.save:
        save_training_state(args.save, model, optimizer, pre, args.epochs, hist)
        print(f"saved {args.save}")
    return 0


def _fmt(values: list[float | None], unit: str = "") -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "N/A"
    mean = statistics.fmean(got)
    sd = statistics.stdev(got) if len(got) > 1 else 0.0
    miss = "" if len(got) == len(values) else f" ({len(got)}/{len(values)})"
    return f"{mean:.2f}±{sd:.2f}{unit}{miss}"


def run_compare(args: argparse.Namespace) -> tuple[list[str], dict[str, list[Any]]]:
    """Train every method for every seed; return the method list and their histories."""
    from .nn import train

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in _methods()]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {_methods()}")
    runs: dict[str, list[Any]] = {m: [] for m in methods}
    for seed in range(args.seeds):
        for m in methods:
            data, model, optimizer, pre = _build(args, m, seed)
            hist = train(model, data, optimizer=optimizer, preconditioner=pre, epochs=args.epochs,
                         batch_size=args.batch_size, fisher=args.fisher, factored=args.factored, seed=seed,
                         label=m, progress=not args.no_progress)
            runs[m].append(hist)
            if not args.quiet:
                print(f"  seed {seed} {m:<15} final acc {hist.test_accuracy[-1]:.4f}  "
                      f"{sum(hist.epoch_time):.1f} s ({sum(hist.curvature_time):.1f} s curvature)", file=sys.stderr)
    return methods, runs


def compare_table(methods: list[str], runs: dict[str, list[Any]], targets: list[float]) -> str:
    head = "".join(f" {'t(acc>=' + format(t, '.2f') + ') s':>22}" for t in targets)
    lines = [f"{'method':<15}{head} {'t_epoch s':>14} {'curv./epoch s':>14} {'epochs to ' + format(targets[0], '.2f'):>16} {'final acc':>14}"]
    for m in methods:
        hs = runs[m]
        cols = "".join(f" {_fmt([h.time_to(t) for h in hs]):>22}" for t in targets)
        t_epoch = _fmt([statistics.fmean(h.epoch_time) for h in hs])
        c_epoch = _fmt([statistics.fmean(h.curvature_time) for h in hs])
        epochs = _fmt([h.epochs_to(targets[0]) for h in hs])
        final = _fmt([h.test_accuracy[-1] for h in hs])
        lines.append(f"{m:<15}{cols} {t_epoch:>14} {c_epoch:>14} {epochs:>16} {final:>14}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    methods, runs = run_compare(args)
    targets = args.target_accuracy or ([0.95, 0.97] if args.data == "digits" else [0.80, 0.85])
    print(f"{args.data}, {args.epochs} epochs, batch {args.batch_size}, {args.seeds} seed(s), device {args.device}; "
          f"mean ± sd over seeds (N/A: target not reached)")
    print(compare_table(methods, runs, targets))
    print(f"[{time.perf_counter() - t0:.1f} s]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrank-online", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the MLP with one method")
    p_train.add_argument("--method", default="bkfac", choices=_methods())
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--save", default=None, help="write a checkpoint (.npz) at the end")
    p_train.add_argument("--resume", default=None, help="continue from a checkpoint (.npz)")
    _add_common(p_train)
    p_train.set_defaults(func=cmd_train)
    p_cmp = sub.add_parser("compare", help="run several methods with the same seeds and tabulate")
    p_cmp.add_argument("--methods", default="sgd,adam,kfac,rkfac,bkfac,brkfac,bkfacc")
    p_cmp.add_argument("--seeds", type=int, default=1)
    p_cmp.add_argument("--quiet", action="store_true")
    _add_common(p_cmp)
    p_cmp.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
