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
preconditioned gradient to the other). ``kfac:sync`` waits on each collective in
``kfac.step()`` (``Distributed(async_op=False)``); with ``--fisher type2`` (or ``mc``) the
default issues the statistics at the end of the forward pass, so that they travel during the
backward pass: the two compare the overlap.

``python evidence/torch_distributed.py`` regenerates ``docs/evidence/distributed_table.rst`` (about a
minute on 2 cores); ``--quick`` runs tiny sizes in seconds and writes nothing unless
``--output-dir`` is given. On a shared machine timings are noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import socket
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
from _publish import publish
from torch import nn

from lowrank_online.torch import KFAC, Distributed

METHODS = ("kfac", "rkfac", "bkfac", "ekfac", "ekfac:gram", "kfac@0.5", "bkfac@0.5")


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
        options = Distributed(statistics=None if what in ("", "sync") else what, async_op=what != "sync",
                              grad_worker_fraction=float(fraction or 1))
        kfac = KFAC(model, method, fisher=args.fisher, T_updt=1, T_inv=1, rank=args.rank, damping=0.1,
                    distributed=options if world > 1 else None)
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
    parser.add_argument("--fisher", choices=("empirical", "type2", "mc"), default="empirical",
                        help="Fisher estimate (mc: each process draws its own targets, so the max. rel. diff. "
                             "column compares different draws)")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    args.width = args.width or (32 if args.quick else 512)
    args.steps = args.steps or (2 if args.quick else 15)
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
        # Each side under its faster OpenMP wait policy (measured): the one process of 2 threads
        # under PyTorch's default (its threads spin between the many small parallel regions;
        # PASSIVE made them 1.2-1.5x slower here), the 2 processes of 1 thread each under PASSIVE
        # (their spinning runtime took the cores from the other process and from gloo's threads:
        # 1.6x slower). The children read the environment when they start.
        before = os.environ.get("OMP_WAIT_POLICY")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            mp.start_processes(_worker, args=(2, port, args, folder), nprocs=2, start_method="spawn")
        finally:
            if before is None:
                os.environ.pop("OMP_WAIT_POLICY")
            else:
                os.environ["OMP_WAIT_POLICY"] = before
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
             f"T_updt = T_inv = 1, {args.fisher} Fisher; 2 gloo processes x 1 thread vs 1 process x 2 threads, "
             f"{args.steps} timed steps (python evidence/torch_distributed.py"
             f"{'' if args.fisher == 'empirical' else ' --fisher ' + args.fisher}).")
    lines = [title, "", rule, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    lines.append(rule)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
