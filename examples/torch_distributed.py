"""Data-parallel K-FAC on CPU: 2 gloo processes, DistributedDataParallel, KFAC(distributed=True).

Each process trains the same MLP on its half of every batch of a synthetic classification
task. DDP averages the gradients; ``KFAC(..., distributed=True)`` gives every process the
factors of the whole batch and computes each decomposition on one process. At the end every
process checks that it holds the same curvature as the others. With
``--grad-worker-fraction 0.5`` each layer's curvature lives on one of the two processes, which
sends that layer's preconditioned gradient to the other (half the curvature's memory each).

    python examples/torch_distributed.py [--method bkfac] [--steps 30] [--grad-worker-fraction 0.5]
"""

from __future__ import annotations

import argparse
import datetime
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lowrank_online.torch import KFAC, Distributed


def train(rank: int, world: int, port: int, method: str, steps: int, fraction: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)  # the same initial model on every process
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    # hooks on the inner model: DDP's forward calls it, so its modules' hooks fire
    kfac = KFAC(model, method, rank=16, T_updt=2, T_inv=10, damping=0.1,
                kl_clip=1e-3, lr=0.1, distributed=Distributed(grad_worker_fraction=fraction))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    teacher = torch.Generator().manual_seed(1)
    W = torch.randn(20, 4, generator=teacher)
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)  # the same global batch on every process
        x = torch.randn(128, 20, generator=gen)
        y = (x @ W).argmax(1)
        shard = slice(rank * 128 // world, (rank + 1) * 128 // world)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x[shard]), y[shard])
        loss.backward()  # DDP all-reduces the gradients
        kfac.step()  # a collective on statistics steps
        opt.step()
        if rank == 0 and step % 10 == 0:
            rep = kfac.distributed_report
            print(f"step {step:3d}  loss {loss.item():.4f}  curvature bytes/step {rep.bytes}  "
                  f"decompositions {len(rep.owners)}  idle ranks {rep.idle_ranks}")
    held: list = [None] * world
    dist.all_gather_object(held, kfac.preconditioner.layers)
    if rank == 0:
        for r, layers in enumerate(held):
            print(f"rank {r} holds the curvature of layers {layers}")
    # every process gets the same checkpoint (a collective when layers live on their workers)
    state = kfac.state_dict()["preconditioner"]["layers"]
    digest = torch.tensor([float(v["state"]["A"]["eigenvalues"].sum()) for v in state.values()], dtype=torch.float64)
    gathered = [torch.empty_like(digest) for _ in range(world)]
    dist.all_gather(gathered, digest)
    if rank == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered)
        print(f"identical checkpoint of the curvature on all {world} processes: {same}")
    # every process done communicating before any tears the group down (gloo aborts a process
    # whose group is destroyed while a peer is still in a collective)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bkfac")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--grad-worker-fraction", type=float, default=1.0)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(train, args=(args.processes, port, args.method, args.steps, args.grad_worker_fraction),
             nprocs=args.processes)


if __name__ == "__main__":
    main()
