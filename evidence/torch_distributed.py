"""Data-parallel :class:`lowrank_online.torch.KFAC` with 2 gloo processes against one process.

One run on this machine, for each method (kfac, rkfac, bkfac, ekfac), on an MLP
``256-W-W-10`` (default W = 512), float32, global batch 256, rank 32, a statistics step and an
inverse step every step (``T_updt = T_inv = 1``: the communication-heaviest schedule):

* **bytes/step**: payload bytes one process hands to or receives from collectives per step (the
  counts, the statistics, the decompositions; :class:`~lowrank_online.torch.StepReport`), and
  the part of it that is statistics (Gram all-reduce or row all-gather);
* **time/step**: median wall time of one training step (forward, backward, the gradient
  all-reduce that DDP would do, ``kfac.step()``) with 2 processes of 1 thread each on half the
  batch, against one process of 2 threads on the whole batch (the same 2 cores);
* **idle ranks/step**: processes that computed no decomposition, averaged over the steps;
* **curvature held**: bytes of the preconditioner's arrays on one process (the largest of the
  two), against the one-process run's;
* **max rel. diff.**: of the preconditioned gradients against the one-process run.

A method may name what its statistics travel as after a colon (``--methods bkfac bkfac:rows``
compares the default, where a factor whose rows per process outnumber its width travels as the
triangular factor of their QR, with the plain row all-gather; give ``--batch`` above twice the
widths for every factor to compress), and its ``grad_worker_fraction`` after an ``@``
(``kfac@0.5``: each layer's curvature on one of the two processes, which sends its
preconditioned gradient to the other).

``python evidence/torch_distributed.py`` regenerates ``docs/evidence/distributed_table.rst`` (about a
minute on 2 cores); ``--quick`` runs tiny sizes in seconds and writes nothing unless
``--output-dir`` is given. On a shared machine timings are noisy: compare ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import pickle  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from _publish import publish  # noqa: E402
from torch import nn  # noqa: E402

from lowrank_online.torch import KFAC, Distributed  # noqa: E402

METHODS = ("kfac", "rkfac", "bkfac", "ekfac", "kfac@0.5", "bkfac@0.5")


def _held_bytes(kfac: KFAC) -> int:
    """Bytes of the arrays of the preconditioner on this process."""
    def walk(v) -> int:
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0

    return walk(kfac.preconditioner.state_dict())


def _model(width: int, d_in: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))


def _batch(step: int, batch: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return torch.randn(batch, d_in, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def _run(method: str, args: argparse.Namespace, rank: int, world: int) -> dict:
    """Train ``args.steps`` steps; every process runs its shard (world 1: the whole batch).

    ``method`` may name what travels after a colon, ``"bkfac:rows"`` for
    ``Distributed(statistics="rows")`` (the uncompressed all-gather), and the
    ``grad_worker_fraction`` after an ``@``."""
    method, _, fraction = method.partition("@")
    method, _, what = method.partition(":")
    model = _model(args.width, args.d_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kfac = KFAC(model, method, fisher="empirical", T_updt=1, T_inv=1, rank=args.rank, damping=0.1,
                    distributed=(Distributed(statistics=what or None, grad_worker_fraction=float(fraction or 1))
                                 if world > 1 else None))
    n = args.batch // world
    times, grads, reports = [], [], []
    for step in range(args.steps + 1):
        x, y = _batch(step, args.batch, args.d_in)
        x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if world > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kfac.step()
        elapsed = time.perf_counter() - start
        grads.append([p.grad.clone() for p in model.parameters()])
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
        if step:  # the first step (every decomposition from scratch) is the warm-up
            times.append(elapsed)
            if world > 1:
                reports.append(kfac.distributed_report)
    out = {"time": statistics.median(times), "grads": grads, "held": _held_bytes(kfac)}
    if reports:
        out["bytes"] = statistics.mean(r.bytes for r in reports)
        out["statistics"] = statistics.mean(r.statistics_bytes for r in reports)
        out["idle"] = statistics.mean(r.idle_ranks for r in reports)
        out["owners"] = statistics.mean(len(r.owners) for r in reports)
    return out


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        out = {m: _run(m, args, rank, world) for m in args.methods}
        held = [None] * world
        dist.all_gather_object(held, {m: out[m]["held"] for m in args.methods})
        for m in args.methods:
            out[m]["held"] = max(h[m] for h in held)
        if rank == 0:
            with open(os.path.join(folder, "dist.pkl"), "wb") as f:
                pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    args.width = args.width or (32 if args.quick else 512)
    args.steps = args.steps or (2 if args.quick else 5)
    args.d_in = 32 if args.quick else 256
    if args.quick:
        args.batch = min(args.batch, 32)
        args.rank = min(args.rank, 8)

    import torch.multiprocessing as mp

    torch.set_num_threads(2)
    single = {m: _run(m, args, 0, 1) for m in args.methods}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_worker, args=(2, port, args, folder), nprocs=2, start_method="spawn")
        with open(os.path.join(folder, "dist.pkl"), "rb") as f:
            two = pickle.load(f)

    rows = []
    for m in args.methods:
        diff = max(
            float((a - b).abs().max() / a.abs().max())
            for ga, gb in zip(single[m]["grads"], two[m]["grads"], strict=True)
            for a, b in zip(ga, gb, strict=True)
        )
        rows.append({"method": m, "bytes": two[m]["bytes"], "statistics": two[m]["statistics"],
                     "single": single[m]["time"], "two": two[m]["time"], "idle": two[m]["idle"],
                     "owners": two[m]["owners"], "diff": diff, "held": two[m]["held"],
                     "held_single": single[m]["held"]})
    text = _table(rows, args)
    print(text)
    publish(text, rows, lambda res, path: False, table="distributed_table.rst", figure="distributed.png",
            output_dir=args.output_dir, quick=args.quick)
    return rows


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    head = ["method", "bytes/step", "of which statistics", "1 process (ms)", "2 processes (ms)", "ratio",
            "decompositions/step", "idle ranks/step", "curvature held", "max rel. diff."]
    body = [[r["method"], f"{r['bytes'] / 1e6:.2f} MB", f"{r['statistics'] / 1e6:.2f} MB", f"{1e3 * r['single']:.1f}",
             f"{1e3 * r['two']:.1f}", f"{r['two'] / r['single']:.2f}", f"{r['owners']:.0f}", f"{r['idle']:.1f}",
             f"{r['held'] / 1e6:.2f} of {r['held_single'] / 1e6:.2f} MB", f"{r['diff']:.1e}"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    rule = "  ".join("=" * w for w in widths)
    title = (f"MLP {args.d_in}-{args.width}-{args.width}-10, float32, global batch {args.batch}, rank {args.rank}, "
             f"T_updt = T_inv = 1; 2 gloo processes x 1 thread vs 1 process x 2 threads, {args.steps} timed steps "
             "(python evidence/torch_distributed.py).")
    lines = [title, "", rule, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    lines.append(rule)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
