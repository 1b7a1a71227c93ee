"""Per-phase cost of :class:`lowrank_online.torch.KFAC` relative to one SGD step (CurvLinOps-style).

For an MLP 784-W-W-10 (W = 1024, 4096) and a small CNN, batch 256, float32, every phase in one run:

* **sgd**: one plain step (zero_grad, forward, cross-entropy, backward, ``SGD.step``), the unit;
* **statistics**: what a statistics step adds to forward + backward (the hooks' input rows and
  patch unfolding, the Monte-Carlo backward pass);
* **factor**: the preconditioner's update on a step without inverse work (the EA of the dense
  factors; nothing for pure ``bkfac``);
* **decomposition**: what an inverse step adds (``eigh`` for kfac, the randomized EVD for rkfac,
  the B-update for bkfac);
* **apply**: ``precondition`` of every layer's gradient, as KFAC calls it (in place in its
  gradient buffer, ``overwrite_grad=True``, its finiteness checked by KFAC);
* **module**: KFAC's own work per step (hooks on non-statistics steps, reshapes, casts,
  finiteness checks, writing ``.grad``), i.e. ``kfac.step()`` minus ``apply``;
* **amortised**: ``sgd + (statistics + factor) / T_updt + decomposition / T_inv + apply + module``
  with the default schedule (``T_updt = 10``, ``T_inv = 100``, ``T_brand = T_updt``), in units of
  the SGD step. ``--check-amortised N`` also times N real steps of the default schedule.

Each phase is timed in alternation with an SGD step of the same model (the best of ``--repeat``
rounds after a warm-up round), and its ratio uses that neighbouring SGD time, so that a machine
whose load changes during the run still gives consistent ratios. On the shared 2-core test
machine timings are noisy all the same: compare ratios, not seconds, and rerun on a quiet machine.

``python evidence/torch_overhead.py`` regenerates ``docs/evidence/torch_overhead_table.rst``
(about 10 minutes on 2 cores, most of it kfac's ``eigh`` at W = 4096); ``--quick`` runs small
sizes in seconds and writes nothing unless ``--output-dir`` is given; ``--device cuda`` times a
GPU (with synchronisation).
"""

from __future__ import annotations

# OpenMP's wait policy is left as PyTorch users get it. The other evidence scripts set
# OMP_WAIT_POLICY=PASSIVE so that PyTorch's idle threads do not spin against NumPy's BLAS pool;
# in a PyTorch-only run it makes every small parallel region wake its threads: the B-update at
# W = 1024 (many small products and eigendecompositions) then takes 40 SGD steps instead of 8.6.
import argparse
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from _publish import publish, pyplot
from torch import nn

from lowrank_online.curvature import KFACPreconditioner
from lowrank_online.torch import KFAC

DEFAULTS = {"T_updt": 10, "T_inv": 100}
PHASES = ("statistics", "factor", "decomposition", "apply", "module")


@dataclass
class Row:
    model: str
    method: str
    sgd: float
    phases: dict[str, float] = field(default_factory=dict)
    amortised: float = 1.0
    measured: float | None = None


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def cnn(channels: int = 16) -> nn.Module:
    c = channels
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(2 * c * 7 * 7, 10))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating(fns, rounds: int, device: torch.device, *, warmup: bool = True) -> list[float]:
    """Best time of each function over ``rounds`` rounds that call every function once, in turn.

    A busy machine slows neighbouring calls alike, so ratios and differences of these bests
    survive the noise better than separate best-of-N runs taken minutes apart.
    """
    if warmup:
        for fn in fns:
            fn()
        _sync(device)
    out = [math.inf] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out[i] = min(out[i], time.perf_counter() - t0)
    return out


def _fb(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def measure(name: str, build, x, y, methods: list[str], repeat: int, device: torch.device, rank: int,
            check_amortised: int) -> list[Row]:
    """Every phase is timed in alternation with an SGD step of the same model (``sgd``), and each
    ratio uses that neighbouring SGD time."""
    torch.manual_seed(0)
    model = build().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def sgd():
        _fb(model, x, y)
        opt.step()

    (t_sgd,) = alternating([sgd], repeat, device)
    rows = [Row(name, "sgd", t_sgd, dict.fromkeys(PHASES, 0.0), 1.0)]
    module = _module_overhead(build, model, x, y, repeat, device, rank, sgd)
    for method in methods:
        rows.append(_measure_method(name, build, model, x, y, method, repeat, device, rank, t_sgd, sgd, module,
                                    check_amortised))
        print(_line(rows[-1]), flush=True)
    return rows


def _grads(model, layers):
    """Each layer's gradient as KFAC sees it: the weight as a matrix, and the bias (or None)."""
    out = {}
    for n in layers:
        mod = model.get_submodule(n)
        w = mod.weight.grad.reshape(mod.weight.shape[0], -1)
        out[n] = (w.clone(), None if mod.bias is None else mod.bias.grad.clone())
    return out


def _measure_method(name, build, model, x, y, method, repeat, device, rank, t_sgd, sgd, module,
                    check_amortised) -> Row:
    opts = {"rank": rank}
    # Statistics: a KFAC whose every step is a statistics step; each timed pass discards the
    # previous one's statistics (never stepped), so only the capture is timed. The statistics
    # do not depend on the method; rkfac's first update is cheap, and it does no more inverse work.
    kfac = KFAC(model, "rkfac", T_updt=1, T_inv=10**6, keep_statistics=True, **opts)

    def plain():
        with kfac.paused():
            _fb(model, x, y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        capture, base, unit = alternating([lambda: _fb(model, x, y), plain, sgd], repeat, device)
        _fb(model, x, y)
    stats = max(capture - base, 0.0) / unit
    kfac.step()  # consumes the last captured pass
    # Fresh statistics for every timed update: feeding one batch twice would send the B-update
    # down its rank-revealing path (the new columns lie in the held span), which real runs never take.
    batches = []
    for i in range(2 * repeat + 4):
        xi = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(i))] + 0.1 * i
        _fb(model, xi, y)
        kfac.step()
        batches.append({n: kfac.statistics(n) for n in kfac.layers})
    grads = _grads(model, kfac.layers)
    kfac.remove()

    # Factor update and decomposition: fresh statistics fed to two preconditioners whose inverse
    # work is due on even steps: one at k = 1 (the factor update alone), one at k = 2 (with the
    # inverse work).
    def at(k):
        pre = KFACPreconditioner(method, T_inv=2, T_brand=2, T_rsvd=2, T_corct=2, **opts)
        for step in range(k):
            for n, (a, g) in batches[step].items():
                pre.update(n, a, g)
            pre.step()
        return pre

    pre1, pre2 = at(1), at(2)
    fresh1, fresh2 = iter(batches[2:] * 8), iter(batches[2:] * 8)

    def feeder(pre, fresh):
        def feed():
            for n, (a, g) in next(fresh).items():
                pre.update(n, a, g)
        return feed

    factor_t, unit = alternating([feeder(pre1, fresh1), sgd], repeat, device)
    factor = factor_t / unit
    # Fewer rounds, no warm-up: kfac's eigh at W = 4096 takes minutes per call on 2 cores.
    full_t, unit = alternating([feeder(pre2, fresh2), sgd], max(1, repeat // 2), device, warmup=False)
    decomposition = max(full_t / unit - factor, 0.0)
    copy, apply_fn = _applier(pre2, grads)
    copy_t, apply_t, unit = alternating([copy, apply_fn, sgd], repeat, device)
    apply = max(apply_t - copy_t, 0.0) / unit

    phases = {"statistics": stats, "factor": factor, "decomposition": decomposition, "apply": apply, "module": module}
    t_updt, t_inv = DEFAULTS["T_updt"], DEFAULTS["T_inv"]
    t_dec = t_updt if method in ("bkfac",) else t_inv
    amortised = 1.0 + (stats + factor) / t_updt + decomposition / t_dec + apply + module
    # phases are stored relative to the SGD step: Row.phases * Row.sgd gives seconds
    row = Row(name, method, t_sgd,
              {k: v * t_sgd for k, v in phases.items()}, amortised)
    if check_amortised:
        per_step = _run(build, x, y, method, check_amortised, device, rank)
        (unit,) = alternating([sgd], repeat, device)
        row.measured = per_step / unit
    return row


def _applier(pre, grads):
    """``precondition`` as KFAC calls it: ``precondition_blocks`` in place in a weight and a
    bias buffer (the column blocks of ``[W b]``; the finiteness test included), and the copy
    that refreshes the buffers, to be subtracted."""
    bufs = {n: tuple(None if g is None else torch.empty_like(g) for g in pair) for n, pair in grads.items()}

    def copy():
        for n, pair in grads.items():
            for buf, g in zip(bufs[n], pair, strict=True):
                if g is not None:
                    buf.copy_(g)

    def apply():
        copy()
        return [pre.precondition_blocks(n, [w] if b is None else [w, b[:, None]]) for n, (w, b) in bufs.items()]

    return copy, apply


def _module_overhead(build, model, x, y, repeat, device, rank, sgd) -> float:
    """KFAC's own work per non-statistics step, in SGD steps: the hooks, and kfac.step() around
    the preconditioner's application (reshapes, casts, checks, writing .grad). It does not depend
    on the method; rkfac keeps the set-up cheap."""
    kfac = KFAC(model, "rkfac", T_updt=10**9, T_inv=10**9, rank=rank)
    _fb(model, x, y)
    kfac.step()  # step 0: the only statistics step
    pre = kfac.preconditioner
    _fb(model, x, y)
    grads = _grads(model, kfac.layers)
    twin = build().to(device)  # the same model without hooks
    twin.load_state_dict(model.state_dict())
    saved = [p.grad.clone() for p in model.parameters()]

    def restore():
        # kfac.step() preconditions .grad in place: repeated on the same .grad it would blow up
        for p, g in zip(model.parameters(), saved, strict=True):
            p.grad.copy_(g)

    def via_module():
        restore()
        kfac.step()

    copy, apply = _applier(pre, grads)
    hooked, bare, step, restored, copied, applied, unit = alternating(
        [lambda: _fb(model, x, y), lambda: _fb(twin, x, y), via_module, restore, copy, apply, sgd], repeat, device)
    restore()
    kfac.remove()
    return (max(hooked - bare, 0.0) + max((step - restored) - (applied - copied), 0.0)) / unit


def _run(build, x, y, method, steps, device, rank) -> float:
    """Mean time of ``steps`` real steps with the default schedule (starting after step 0)."""
    torch.manual_seed(0)
    model = build().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    kfac = KFAC(model, method, rank=rank)

    def one():
        _fb(model, x, y)
        kfac.step()
        opt.step()

    one()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(device)
    kfac.remove()
    return (time.perf_counter() - t0) / steps


def _line(r: Row) -> str:
    rel = "  ".join(f"{k} {v / r.sgd:6.3f}" for k, v in r.phases.items())
    meas = f"  measured {r.measured:5.2f}x" if r.measured is not None else ""
    return f"{r.model:>12s} {r.method:>28s}  sgd {r.sgd * 1e3:8.1f} ms  {rel}  amortised {r.amortised:5.2f}x{meas}"


def table(rows: list[Row], header: str) -> str:
    cols = ["model", "method", "SGD step (ms)", *PHASES, "amortised", "measured"]
    body = []
    for r in rows:
        body.append([r.model, r.method, f"{r.sgd * 1e3:.1f}", *(f"{r.phases[p] / r.sgd:.3f}" for p in PHASES),
                     f"{r.amortised:.2f}", "" if r.measured is None else f"{r.measured:.2f}"])
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    sep = "  ".join("=" * w for w in widths)
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([header, "", sep, fmt(cols), sep, *map(fmt, body), sep, ""])


def plot(rows: list[Row], path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    labels = [f"{r.model} {r.method}" for r in rows]
    left = [1.0] * len(rows)
    ax.barh(labels, left, color="0.8", label="SGD step")
    for p in PHASES:
        vals = [r.phases[p] / r.sgd for r in rows]
        ax.barh(labels, vals, left=left, label=p)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("time per phase / one SGD step (statistics, factor, decomposition not amortised)")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (seconds)")
    parser.add_argument("--widths", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=["kfac", "rkfac", "bkfac"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--no-cnn", action="store_true")
    parser.add_argument("--check-amortised", type=int, default=0, metavar="N",
                        help="also time N real steps with the default schedule")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    widths = args.widths or ([64, 128] if args.quick else [1024, 4096])
    batch = args.batch or (32 if args.quick else 256)
    repeat = args.repeat or (1 if args.quick else 5)
    rank = min(args.rank, 16) if args.quick else args.rank
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    rows: list[Row] = []
    for w in widths:
        rows += measure(f"MLP W={w}", lambda w=w: mlp(w), x, y, args.methods, repeat, device, rank,
                        args.check_amortised if w <= 1024 else 0)
    if not args.no_cnn:
        rows += measure("CNN", lambda: cnn(4 if args.quick else 16), x, y, args.methods, repeat, device, rank,
                        args.check_amortised)
    header = (
        f"Per-phase time relative to one SGD step; batch {batch}, float32, rank {rank}, {torch.get_num_threads()} "
        f"threads on {device}; amortised with T_updt={DEFAULTS['T_updt']}, T_inv={DEFAULTS['T_inv']}, "
        "T_brand=T_updt (python evidence/torch_overhead.py)."
    )
    text = table(rows, header)
    print(text)
    publish(text, rows, plot, table="torch_overhead_table.rst", figure="torch_overhead.png",
            output_dir=args.output_dir, quick=args.quick)
    return rows


if __name__ == "__main__":
    main()
