"""Command line: ``lowrank-online train`` and ``lowrank-online compare``.

``train`` fits the library's MLP with one method and prints, per epoch, the losses, the test
accuracy, the time per epoch and the time spent in curvature work. ``compare`` runs several
methods with the same seeds and prints a table like Table 2 of paper 001: time to each
target accuracy, time per epoch, epochs to target and final accuracy (mean ± sd over seeds).
Data: ``digits`` (scikit-learn's bundled digits) or ``teacher-student`` (synthetic, wide first
layer). ``--device cuda`` trains on CuPy, in float32 by default. The experiments themselves
live in :mod:`lowrank_online.nn.experiment`; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from . import _threads
from .curvature import METHODS
from .nn.experiment import FIRST_ORDER, RunConfig, build_run, compare, compare_table, log_to_stderr

EXAMPLES = """\
examples:
  lowrank-online train --method bkfac --data digits --epochs 3
  lowrank-online train --method kfac --epochs 2 --save run.npz
  lowrank-online train --method kfac --epochs 4 --resume run.npz
  lowrank-online compare --data digits --methods sgd,adam,kfac,bkfac --seeds 3 --threads 1
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (options whose default depends on others say so in their
    text), and the epilog's examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action, argparse._StoreTrueAction):
            return action.help or ""
        return super()._get_help_string(action)


def _add_common(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data and model")
    data.add_argument("--data", default="teacher-student", choices=["digits", "teacher-student"],
                      help="scikit-learn's digits, or the synthetic problem with a 1024-wide first layer")
    data.add_argument("--hidden", type=int, nargs="*", default=None,
                      help="hidden widths (default: 128 for digits, 256 for teacher-student)")
    data.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid"], help="hidden activation")
    data.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu: NumPy; cuda: CuPy")
    data.add_argument("--dtype", default=None, choices=["float32", "float64"],
                      help="default: float64 on cpu, float32 on cuda")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=5, help="epochs to train")
    opt.add_argument("--batch-size", type=int, default=128, help="mini-batch size")
    opt.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: 0.05 sgd, 1e-3 adam, 0.1 curvature)"
    )
    opt.add_argument("--momentum", type=float, default=None, help="heavy-ball momentum (default: 0.9 sgd, 0 curvature)")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled weight decay")
    curv = p.add_argument_group("curvature (see KFACPreconditioner)")
    curv.add_argument("--damping", type=float, default=0.1,
                      help="phi of lambda = phi * lambda_max (relative), gamma (pi) or lambda (absolute)")
    curv.add_argument("--damping-mode", default="relative", choices=["relative", "pi", "absolute"],
                      help="how --damping is turned into each factor's damping")
    curv.add_argument("--gradient-damping", type=float, default=0.0,
                      help="gradient floor c: each layer's dampings multiply to at least c |grad|^2 (0: off)")
    curv.add_argument("--damping-adaptation", default="none", choices=["none", "lm"],
                      help="lm: Levenberg-Marquardt adaptation of the damping from each step's loss change")
    curv.add_argument("--rank", type=int, default=64, help="rank applied to the gradient (low-rank methods)")
    curv.add_argument("--oversample", type=int, default=10, help="randomized EVD oversampling")
    curv.add_argument("--decay", type=float, default=0.95, help="exponential-average factor rho of the K-factors")
    curv.add_argument("--T-updt", type=int, default=1, help="statistics period (steps)")
    curv.add_argument("--T-inv", type=int, default=10, help="inverse recomputation period (kfac, rkfac, ekfac...)")
    curv.add_argument("--T-brand", type=int, default=1, help="B-update period (bkfac, brkfac, bkfacc, auto)")
    curv.add_argument("--T-rsvd", type=int, default=10, help="RSVD overwrite period (brkfac)")
    curv.add_argument("--T-corct", type=int, default=10, help="light correction period (bkfacc)")
    curv.add_argument("--phi-crc", type=float, default=0.5, help="fraction of the rank corrected (bkfacc)")
    curv.add_argument("--kl-clip", type=float, default=None, help="KL-clipping bound kappa (default 1e-2)")
    curv.add_argument("--fisher", default="mc", choices=["mc", "empirical"],
                      help="mc: targets sampled from the model (true Fisher); empirical: the data's targets")
    curv.add_argument("--factored", action="store_true", help="linear-time application (paper 001, Alg. 8)")
    curv.add_argument("--no-continuation", action="store_true", help="turn spectrum continuation off (Sec. 3.5)")
    run = p.add_argument_group("reporting and machine")
    run.add_argument("--target-accuracy", type=float, nargs="*", default=None,
                     help="test accuracies to time (default: 0.95 0.97 digits, 0.80 0.85 teacher-student)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--threads", type=int, default=None,
                     help="limit the BLAS/OpenMP (and PyTorch) thread pools, e.g. 1 on a shared machine")


def _config(args: argparse.Namespace, **overrides: object) -> RunConfig:
    """The run configuration of parsed arguments (same names, a few renamed)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(continuation=not args.no_continuation, progress=not args.no_progress,
                  damping_adaptation=None if args.damping_adaptation == "none" else args.damping_adaptation)
    values.update(overrides)
    return RunConfig(**values)


def _targets(args: argparse.Namespace) -> list[float]:
    return args.target_accuracy or ([0.95, 0.97] if args.data == "digits" else [0.80, 0.85])


def cmd_train(args: argparse.Namespace) -> int:
    from .nn import load_training_state, save_training_state, train

    config = _config(args)
    data, model, optimizer, pre = build_run(config, args.method, args.seed)
    start, steps = 0, 0
    if args.resume:
        start, steps = load_training_state(args.resume, model, optimizer, pre)
    print(f"{args.method} on {data.name}: {model.sizes}, {model.n_parameters} parameters, "
          f"{data.X_train.shape[0]} train / {data.X_test.shape[0]} test, device {args.device}")
    if args.resume:
        print(f"resumed from {args.resume} after epoch {start} ({steps} steps); the rows and the summary below cover "
              f"epochs {start + 1}-{args.epochs}")
    if start >= args.epochs:
        print(f"nothing to do: the checkpoint is at epoch {start}, --epochs is {args.epochs}")
        return 0
    print(f"{'epoch':>5} {'train loss':>11} {'test loss':>10} {'test acc':>9} {'epoch s':>8} {'curv. s':>8}")

    def row(h: object) -> None:
        print(f"{h.epoch[-1]:>5} {h.train_loss[-1]:>11.4f} {h.test_loss[-1]:>10.4f} "
              f"{h.test_accuracy[-1]:>9.4f} {h.epoch_time[-1]:>8.2f} {h.curvature_time[-1]:>8.2f}", flush=True)

    from .nn import History

    hist = train(model, data, optimizer=optimizer, preconditioner=pre, epochs=args.epochs, start_epoch=start,
                 batch_size=args.batch_size, fisher=args.fisher, factored=args.factored, seed=args.seed,
                 label=args.method, progress=not args.no_progress, history=History(args.method, steps=steps),
                 on_epoch=row)
    total, curv = sum(hist.epoch_time), sum(hist.curvature_time)
    span = f"epochs {start + 1}-{args.epochs}" if args.resume else f"{len(hist.epoch)} epoch(s)"
    print(f"final test accuracy {hist.test_accuracy[-1]:.4f}; over {span}: {total / len(hist.epoch):.2f} s per "
          f"epoch, {curv:.2f} s of {total:.2f} s in curvature work")
    if args.save:
        save_training_state(args.save, model, optimizer, pre, args.epochs, hist)
        print(f"saved {args.save}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = [*FIRST_ORDER, *METHODS]
    bad = [m for m in methods if m not in known]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {known}")
    runs = compare(_config(args), methods, args.seeds, log=None if args.quiet else log_to_stderr)
    seeds = "1 seed" if args.seeds == 1 else f"{args.seeds} seeds, mean ± sd over seeds"
    print(f"{args.data}, {args.epochs} epochs, batch {args.batch_size}, {seeds}, device {args.device}")
    print(compare_table(methods, runs, _targets(args)))
    print(f"[{time.perf_counter() - t0:.1f} s]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrank-online", description=__doc__.splitlines()[0],
                                     formatter_class=_Formatter, epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the MLP with one method", formatter_class=_Formatter,
                             epilog=EXAMPLES, description="Train the library's MLP with one method.")
    p_train.add_argument("--method", default="bkfac", choices=[*FIRST_ORDER, *METHODS], metavar="METHOD",
                         help=f"optimizer or curvature method, one of {', '.join([*FIRST_ORDER, *METHODS])}")
    p_train.add_argument("--seed", type=int, default=0, help="seed of the initialisation, batches and MC targets")
    p_train.add_argument("--save", default=None, help="write a checkpoint (.npz) at the end")
    p_train.add_argument("--resume", default=None, help="continue from a checkpoint (.npz) written by --save")
    _add_common(p_train)
    p_train.set_defaults(func=cmd_train)
    p_cmp = sub.add_parser("compare", help="run several methods with the same seeds and tabulate",
                           formatter_class=_Formatter, epilog=EXAMPLES,
                           description="Run several methods with the same seeds and print a table.")
    p_cmp.add_argument("--methods", default="sgd,adam,kfac,rkfac,bkfac,brkfac,bkfacc",
                       help="comma-separated methods (see train --method)")
    p_cmp.add_argument("--seeds", type=int, default=1, help="seeds per method (0, 1, ...)")
    p_cmp.add_argument("--quiet", action="store_true", help="no line per finished run on stderr")
    _add_common(p_cmp)
    p_cmp.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _threads.limit_threads(args.threads)
        if args.threads is None:
            _threads.check_oversubscription()
        return args.func(args)
    except ValueError as err:  # a bad option value (the library names it), reported without a traceback
        parser.exit(2, f"lowrank-online: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
