"""lowrank_online.torch.KFAC(distributed=...) with 2 gloo processes on this machine (issue 15).

One ``setup_cache`` spawns the two processes (1 thread each) and trains an MLP 256-512-512-10,
float32, global batch 256, rank 32, with a statistics and an inverse step every step (the
communication-heaviest schedule), for kfac and bkfac with ``grad_worker_fraction`` 1 (every
process holds every layer) and 0.5 (each layer on one process). What it tracks, per step after
a warm-up: ``track_bytes`` (payload bytes one process hands to or receives from collectives,
:class:`~lowrank_online.torch.StepReport`), ``track_step_ms`` (median wall time of a training
step: forward, backward, the gradient all-reduce, ``kfac.step()``) and ``track_held_fraction``
(bytes of the curvature held by the busiest process over those of one process holding every
layer). ``evidence/torch_distributed.py`` prints the same quantities as a table.
"""

import datetime
import os
import pathlib
import pickle
import socket
import statistics
import sys
import tempfile
import time
import warnings

try:
    import torch
    import torch.distributed as dist
    from torch import nn

    from lowrank_online.torch import KFAC, Distributed
except ImportError:  # pragma: no cover - the suite runs without torch
    torch = None

CASES = [("kfac", 1.0), ("kfac", 0.5), ("bkfac", 1.0), ("bkfac", 0.5)]
WIDTH, D_IN, BATCH, RANK, STEPS = 512, 256, 256, 32, 4


def _held_bytes(kfac):
    def walk(v):
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0

    return walk(kfac.preconditioner.state_dict())


def _case(method, fraction, rank, world):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D_IN, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(),
                          nn.Linear(WIDTH, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kfac = KFAC(model, method, fisher="empirical", T_updt=1, T_inv=1, rank=RANK, damping=0.1,
                    distributed=Distributed(grad_worker_fraction=fraction))
    n = BATCH // world
    times, sent = [], []
    for step in range(STEPS + 1):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(BATCH, D_IN, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
        dist.barrier()
        start = time.perf_counter()
        model.zero_grad()
        nn.functional.cross_entropy(model(x[rank * n:(rank + 1) * n]), y[rank * n:(rank + 1) * n]).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kfac.step()
        if step:  # the first step decomposes every factor from scratch: the warm-up
            times.append(time.perf_counter() - start)
            sent.append(kfac.distributed_report.bytes)
    held = [None] * world
    dist.all_gather_object(held, _held_bytes(kfac))
    return {"ms": 1e3 * statistics.median(times), "bytes": statistics.mean(sent), "held": max(held)}


def _worker(rank, world, port, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        out = {case: _case(*case, rank, world) for case in CASES}
        if rank == 0:
            with open(os.path.join(folder, "out.pkl"), "wb") as f:
                pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


class TorchDistributedStep:
    params = ([f"{m}@{f:g}" for m, f in CASES],)
    param_names = ["method@fraction"]
    timeout = 600

    def setup_cache(self):
        if torch is None or not (dist.is_available() and dist.is_gloo_available()):
            return None
        import torch.multiprocessing as mp

        # The spawned processes import _worker from this module by name: asv imports this
        # folder as the package ``benchmarks`` from a path the children do not get unless it is
        # on sys.path (which spawn hands to them), ahead of the repository's own benchmarks/.
        here = str(pathlib.Path(__file__).resolve().parents[1])
        if sys.path[:1] != [here]:
            sys.path.insert(0, here)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as folder:
            mp.start_processes(_worker, args=(2, port, folder), nprocs=2, start_method="spawn")
            with open(os.path.join(folder, "out.pkl"), "rb") as f:
                out = pickle.load(f)
        return {f"{m}@{f:g}": v for (m, f), v in out.items()}

    def setup(self, results, case):
        if results is None:
            raise NotImplementedError("torch with the gloo backend is not installed")

    def track_bytes(self, results, case):
        return results[case]["bytes"]

    track_bytes.unit = "bytes"

    def track_step_ms(self, results, case):
        return results[case]["ms"]

    track_step_ms.unit = "ms"

    def track_held_fraction(self, results, case):
        method = case.split("@")[0]
        return results[case]["held"] / results[f"{method}@1"]["held"]

    track_held_fraction.unit = "ratio"
