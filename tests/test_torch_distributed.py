"""lowrank_online.torch.KFAC(distributed=...) under torch.distributed with the gloo backend.

Each test spawns 2 or 3 local processes (torch.multiprocessing, spawn) that run several
scenarios in one process group and write what they found; every process also computes the
single-process reference on the concatenated batch itself. Collectives time out after 60 s and
the spawning test after 150 s, so a bug fails instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import time
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = torch.distributed
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

from torch import nn  # noqa: E402

from lowrank_online import DecompositionError  # noqa: E402
from lowrank_online.torch import KFAC, Distributed, assign_owners  # noqa: E402

BATCH = 12
RTOL = {torch.float64: 1e-6, torch.float32: 1e-4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, scenario: str, folder: str, timeout: float = 150.0) -> list[dict]:
    import torch.multiprocessing as mp

    port = _free_port()
    ctx = mp.start_processes(_worker, args=(world, port, scenario, folder), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {world} processes of {scenario!r} did not finish within {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    out = []
    for r in range(world):
        with open(os.path.join(folder, f"{scenario}-{r}.pkl"), "rb") as f:
            out.append(pickle.load(f))
    return out


# ---------------------------------------------------------------------------- in the processes
def _model(dtype: torch.dtype, layers: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    widths = [6, 5, 4, 3][: layers + 1] if layers < 3 else [6, 5, 4, 3]
    mods: list[nn.Module] = []
    for i in range(len(widths) - 1):
        mods.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods).to(dtype)


def _batch(step: int, dtype: torch.dtype, d_in: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, d_in, generator=gen, dtype=dtype), torch.randint(0, classes, (BATCH,), generator=gen)


def _options(method: str, **extra) -> dict:
    return {"method": method, "fisher": "empirical", "T_updt": 1, "T_inv": 2, "rank": 3, "damping": 0.1, "seed": 3,
            **extra}


def _shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = x.shape[0] // world
    return x[rank * n:(rank + 1) * n]


def _train_step(
    model: nn.Module, kfac: KFAC, x: torch.Tensor, y: torch.Tensor, world: int | None
) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    if world is not None:  # what DistributedDataParallel does
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
    kfac.step()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    return grads


def _compare(method: str, dtype: torch.dtype, rank: int, world: int, steps: int = 3, layers: int = 3,
             dist_options: Distributed | None = None, extra: dict | None = None) -> dict:
    """Preconditioned gradients of the distributed run and of one process on the whole batch."""
    ref_model, model = _model(dtype, layers), _model(dtype, layers)
    opts = _options(method, **(extra or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = KFAC(ref_model, **opts)
        kfac = KFAC(model, **opts, distributed=dist_options or True)
    worst, reports = 0.0, []
    for step in range(steps):
        x, y = _batch(step, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = _train_step(ref_model, ref, x, y, None)
            got = _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
        for w, g in zip(want, got, strict=True):
            worst = max(worst, float((w - g).abs().max() / w.abs().max()))
        reports.append(kfac.distributed_report)
    # "state": what this process holds; "full": every layer (gathered from the workers when
    # each layer lives on its workers only; KFAC.state_dict is then a collective)
    return {"worst": worst, "reports": reports, "state": _state_of(kfac), "full": _full_state_of(kfac),
            "held": list(kfac.preconditioner.layers)}


def _state_of(kfac: KFAC) -> dict:
    """The preconditioner's state as NumPy arrays (comparable across processes)."""
    return _host(kfac.preconditioner.state_dict())


def _full_state_of(kfac: KFAC) -> dict:
    return _host(kfac.state_dict()["preconditioner"])


def _host(v):
    if isinstance(v, dict):
        return {k: _host(x) for k, x in v.items()}
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v


def _scenario_two(rank: int, world: int, folder: str) -> dict:
    out: dict = {}
    for dtype in (torch.float64, torch.float32):
        for method in ("kfac", "rkfac", "bkfac", "ekfac"):
            out[(method, str(dtype))] = _compare(method, dtype, rank, world)
    out["kfac-rows"] = _compare("kfac", torch.float64, rank, world, dist_options=Distributed(statistics="rows"))
    out["rkfac-gram"] = _compare("rkfac", torch.float64, rank, world, dist_options=Distributed(statistics="gram"))
    # a randomized EVD that is not exact (no oversampling, no power iteration): the owners must
    # draw with the seeds of the single process (the layers' indices in the model's order)
    out["rkfac-sketch"] = _compare("rkfac", torch.float64, rank, world,
                                   extra={"rank": 2, "oversample": 0, "n_iter": 0})
    # one worker per layer: each layer's curvature on one process only
    for method in ("kfac", "bkfac", "ekfac"):
        out[f"{method}-workers"] = _compare(method, torch.float64, rank, world,
                                            dist_options=Distributed(grad_worker_fraction=0.5))
    out["bkfac-full"] = _compare("bkfac", torch.float64, rank, world)
    out["bkfac-bf16"] = _compare(
        "bkfac", torch.float32, rank, world, dist_options=Distributed(comm_dtype=torch.bfloat16)
    )
    out["bkfac-sync"] = _compare("bkfac", torch.float64, rank, world, dist_options=Distributed(async_op=False))
    # 6 rows per process against factors 3-7 wide: by default most factors travel compressed
    out["bkfac-rows"] = _compare("bkfac", torch.float64, rank, world, dist_options=Distributed(statistics="rows"))
    out["kfac-compressed"] = _compare("kfac", torch.float64, rank, world,
                                      dist_options=Distributed(statistics="compressed"))
    # EKFAC from Gram factors and the moments of each process's rows in the new eigenbasis
    for method in ("ekfac", "ekfac-ra"):
        out[f"{method}-gram"] = _compare(method, torch.float64, rank, world,
                                         dist_options=Distributed(statistics="gram"))
    out["ekfac-rows"] = _compare("ekfac", torch.float64, rank, world, dist_options=Distributed(statistics="rows"))
    out["ekfac-gram-f32"] = _compare("ekfac", torch.float32, rank, world, dist_options=Distributed(statistics="gram"))
    out["moments-failure"] = _moments_failure(rank, world)
    # the type-2 Fisher's passes run in the forward pass: its statistics travel during backward
    for method in ("kfac", "bkfac", "ekfac"):
        out[f"{method}-type2"] = _compare(method, torch.float64, rank, world, extra={"fisher": "type2"})
    out["kfac-type2-sync"] = _compare("kfac", torch.float64, rank, world, extra={"fisher": "type2"},
                                      dist_options=Distributed(async_op=False))
    out["discarded"] = _discarded(rank, world)
    out["measured"] = _measured(rank, world)
    out["failure"] = _failure(rank, world)
    out["failure-workers"] = _failure(rank, world, Distributed(grad_worker_fraction=0.5))
    out["failure-limit"] = _failure_limit(rank, world)
    # a checkpoint for the 3-process run: rank 0 saves one state
    model = _model(torch.float64)
    kfac = KFAC(model, **_options("bkfac"), distributed=True)
    for step in range(2):
        x, y = _batch(step, torch.float64)
        _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
    if rank == 0:
        torch.save({"model": model.state_dict(), "kfac": kfac.state_dict()}, os.path.join(folder, "ckpt.pt"))
    out["ckpt-state"] = _state_of(kfac)
    # the same run with each layer on one process: the collective state_dict is the same
    model = _model(torch.float64)
    kfac = KFAC(model, **_options("bkfac"), distributed=Distributed(grad_worker_fraction=0.5))
    for step in range(2):
        x, y = _batch(step, torch.float64)
        _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
    saved = {"model": model.state_dict(), "kfac": kfac.state_dict()}
    if rank == 0:
        torch.save(saved, os.path.join(folder, "ckpt-workers.pt"))
    out["ckpt-workers-state"] = _host(saved["kfac"]["preconditioner"])
    dist.barrier()
    return out


def _failure(rank: int, world: int, options: Distributed | None = None) -> dict:
    """At step 2 (an EVD step) the decompositions owned by rank 1 raise there."""
    model = _model(torch.float64)
    kfac = KFAC(model, **_options("kfac"), distributed=options or True)
    pre = kfac.preconditioner
    original = pre.decompose

    def broken(layer, a, g, parts=None):
        if pre.steps == 2:
            raise DecompositionError(f"injected failure of {layer!r} {parts}")
        return original(layer, a, g, parts)

    if rank == 1:
        pre.decompose = broken
    before = None
    caught = []
    for step in range(3):
        if step == 2:
            before = _full_state_of(kfac)
        x, y = _batch(step, torch.float64)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
        caught += [str(m.message) for m in w if "skipped" in str(m.message)]
    report = kfac.distributed_report
    return {"before": before, "after": _full_state_of(kfac), "failed": report.failed, "owners": report.owners,
            "skipped": dict(pre.skipped_updates), "warnings": caught, "held": list(pre.layers)}


def _discarded(rank: int, world: int) -> dict:
    """A capturing forward pass without a step, then a training step (type-2 Fisher): the first
    window's exchange, already issued, is dropped on every process with the window, and the
    step is the one of a single process discarding the same pass."""
    ref_model, model = _model(torch.float64), _model(torch.float64)
    opts = _options("kfac", fisher="type2")
    ref, kfac = KFAC(ref_model, **opts), KFAC(model, **opts, distributed=True)
    worst, warned = 0.0, []
    for step in range(3):
        x, y = _batch(step, torch.float64)
        junk, _ = _batch(50 + step, torch.float64)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ref_model(junk)
            model(_shard(junk, rank, world))
            want = _train_step(ref_model, ref, x, y, None)
            got = _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
        warned += [str(m.message) for m in w if "discarded" in str(m.message)]
        worst = max(worst, max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(want, got, strict=True)))
    return {"worst": worst, "warned": len(warned), "overlapped": kfac.distributed_report.overlapped}


def _measured(rank: int, world: int) -> dict:
    """The smallest factor (layer "4", Gamma: 3 x 3, the cheapest by its estimate) made slow on
    whichever process computes it: from the next step on it is alone on one process."""
    model = _model(torch.float64)
    kfac = KFAC(model, **_options("kfac", T_inv=1), distributed=True)
    pre = kfac.preconditioner
    original = pre.decompose

    def slow(layer, a, g, parts=None):
        if layer == "4" and list(parts) == ["G"]:
            time.sleep(0.2)
        return original(layer, a, g, parts)

    pre.decompose = slow
    owners = []
    for step in range(3):
        x, y = _batch(step, torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
        owners.append(kfac.distributed_report.owners)
    return {"owners": owners}


def _moments_failure(rank: int, world: int) -> dict:
    """EKFAC from Gram factors: at step 1 the moments of rank 1's rows overflow there. Both
    processes skip the update of every layer (the sum is NaN everywhere), keep their state and
    go on; nobody waits."""
    model = _model(torch.float64)
    kfac = KFAC(model, **_options("ekfac"), distributed=Distributed(statistics="gram"))
    pre = kfac.preconditioner
    original = pre.eigenbasis_moments

    def broken(layer, a, g, decompositions=None):
        if pre.steps == 1:
            raise ValueError("injected overflow of the moments")
        return original(layer, a, g, decompositions=decompositions)

    if rank == 1:
        pre.eigenbasis_moments = broken
    states = []
    for step in range(3):
        states.append(_state_of(kfac))
        x, y = _batch(step, torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
    states.append(_state_of(kfac))
    return {"states": states, "skipped": dict(pre.skipped_updates)}


def _failure_limit(rank: int, world: int) -> dict:
    """One worker per layer, max_failures=2: rank 1's decompositions fail from step 1 on. Both
    processes raise at the same step (rank 0 holds none of the failing layers), so neither
    waits on the other."""
    model = _model(torch.float64)
    kfac = KFAC(model, **_options("kfac", T_inv=1, max_failures=2),
                distributed=Distributed(grad_worker_fraction=0.5))
    pre = kfac.preconditioner
    original = pre.decompose

    def broken(layer, a, g, parts=None):
        if pre.steps >= 1:
            raise DecompositionError(f"injected failure of {layer!r} {parts}")
        return original(layer, a, g, parts)

    if rank == 1:
        pre.decompose = broken
    raised = None
    for step in range(4):
        x, y = _batch(step, torch.float64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
        except DecompositionError as err:
            raised = (step, str(err))
            break
    return {"raised": raised}


def _resume(saved: dict, rank: int, world: int, options) -> tuple:
    """Resume a 2-process bkfac checkpoint for steps 2-3 on this group and on one process:
    the worst relative difference of the preconditioned gradients, both KFACs, and the layers
    this process held right after loading."""
    ref_model, model = _model(torch.float64), _model(torch.float64)
    ref = KFAC(ref_model, **_options("bkfac"))
    kfac = KFAC(model, **_options("bkfac"), distributed=options)
    for m, k in ((ref_model, ref), (model, kfac)):
        m.load_state_dict(saved["model"])
        k.load_state_dict(saved["kfac"])
    held = list(kfac.preconditioner.layers)
    worst = 0.0
    for step in range(2, 4):
        x, y = _batch(step, torch.float64)
        want = _train_step(ref_model, ref, x, y, None)
        got = _train_step(model, kfac, _shard(x, rank, world), _shard(y, rank, world), world)
        worst = max(worst, max(float((w - g).abs().max() / w.abs().max()) for w, g in zip(want, got, strict=True)))
    return worst, ref, kfac, held


def _scenario_three(rank: int, world: int, folder: str) -> dict:
    out: dict = {}
    # ranks > factors: one layer, two K-factors, three processes
    out["one-layer"] = _compare("kfac", torch.float64, rank, world, layers=1)
    out["rkfac"] = _compare("rkfac", torch.float32, rank, world)
    # resume the 2-process checkpoint on 3 processes, against one process resuming it
    saved = torch.load(os.path.join(folder, "ckpt.pt"), weights_only=True)
    worst, ref, kfac, _ = _resume(saved, rank, world, True)
    out["resume"] = {"worst": worst, "state": _state_of(kfac), "steps": kfac.steps}
    # the checkpoint gathered from one-worker-per-layer processes, resumed on three processes
    # with one worker per layer
    saved = torch.load(os.path.join(folder, "ckpt-workers.pt"), weights_only=True)
    worst, ref, kfac, held_after_load = _resume(saved, rank, world, Distributed(grad_worker_fraction=1 / 3))
    out["resume-workers"] = {"worst": worst, "full": _full_state_of(kfac), "ref": _state_of(ref),
                             "held": held_after_load, "held_end": list(kfac.preconditioner.layers)}
    return out


def _worker(rank: int, world: int, port: int, scenario: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out = {"two": _scenario_two, "three": _scenario_three}[scenario](rank, world, folder)
        with open(os.path.join(folder, f"{scenario}-{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- the tests
def _same(x, y, path="") -> None:
    """Bit-identical nested states."""
    import numpy as np

    if isinstance(x, dict):
        assert set(x) == set(y), path
        for k in x:
            _same(x[k], y[k], f"{path}/{k}")
    elif isinstance(x, np.ndarray):
        np.testing.assert_array_equal(x, y, err_msg=path)
    else:
        assert x == y, path


def _close(x, y, rtol, path="") -> None:
    import numpy as np

    if isinstance(x, dict):
        for k in x:
            _close(x[k], y[k], rtol, f"{path}/{k}")
    elif isinstance(x, np.ndarray):
        assert x.shape == y.shape, path
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, float(np.abs(x).max(initial=0))), err_msg=path)
    else:
        assert x == y, path


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dist"))
    return folder, _spawn(2, "two", folder)


@pytest.fixture(scope="module")
def three(two):
    folder, _ = two
    return _spawn(3, "three", folder)


@pytest.mark.parametrize("dtype", ["torch.float64", "torch.float32"])
@pytest.mark.parametrize("method", ["kfac", "rkfac", "bkfac", "ekfac"])
def test_two_processes_equal_one_process_on_the_concatenated_batch(two, method, dtype):
    _, results = two
    rtol = RTOL[getattr(torch, dtype.split(".")[1])]
    for r, res in enumerate(results):
        assert res[(method, dtype)]["worst"] <= rtol, (r, res[(method, dtype)]["worst"])
    # and the factors are identical on both processes
    _same(results[0][(method, dtype)]["state"], results[1][(method, dtype)]["state"])


@pytest.mark.parametrize("variant", ["kfac-rows", "rkfac-gram", "rkfac-sketch", "kfac-workers", "bkfac-workers",
                                     "ekfac-workers", "bkfac-sync", "bkfac-rows", "kfac-compressed"])
def test_options_keep_the_single_process_result(two, variant):
    _, results = two
    for res in results:
        assert res[variant]["worst"] <= 1e-6, (variant, res[variant]["worst"])
    _same(results[0][variant]["full"], results[1][variant]["full"])


@pytest.mark.parametrize("variant", ["ekfac-gram", "ekfac-ra-gram", "ekfac-gram-f32"])
def test_ekfac_from_gram_factors_and_moments_keeps_the_single_process_result(two, variant):
    """EKFAC's statistics as Gram all-reduces (factors) plus one all-reduce of the moments in
    the new eigenbasis, instead of the rows: the single process's gradients, identical states."""
    _, results = two
    rtol = 1e-4 if variant.endswith("f32") else 1e-6
    for res in results:
        assert res[variant]["worst"] <= rtol, (variant, res[variant]["worst"])
    _same(results[0][variant]["full"], results[1][variant]["full"])
    _, d_a, d_g = 0, [7, 6, 5], [5, 4, 3]
    floats = sum(a * a + g * g + a * g for a, g in zip(d_a, d_g, strict=True))
    itemsize = 4 if variant.endswith("f32") else 8
    counts = 8 * 4 * 2  # the counts all-gather: terms + 3 layers, float64, 2 processes
    for rep in results[0][variant]["reports"]:
        assert rep.statistics_bytes == floats * itemsize + counts, rep.statistics_bytes
    if variant == "ekfac-gram":
        # gathered as rows: 2 processes x 6 rows x (d_a + d_g) per layer, fewer here by default
        rows = results[0]["ekfac-rows"]["reports"][0].statistics_bytes
        assert rows == 2 * 6 * sum(a + g for a, g in zip(d_a, d_g, strict=True)) * 8 + counts
        assert results[0][variant]["reports"][0].statistics_bytes < rows
        assert results[0][("ekfac", "torch.float64")]["reports"][0].statistics_bytes == \
            results[0][variant]["reports"][0].statistics_bytes
        assert results[0]["ekfac-rows"]["worst"] <= rtol


@pytest.mark.parametrize("method", ["kfac", "bkfac", "ekfac"])
def test_statistics_issued_in_the_forward_pass_keep_the_single_process_result(two, method):
    """With the type-2 (or Monte-Carlo) Fisher the statistics are complete at the end of the
    forward pass and travel during the backward pass; waiting on each collective in step()
    instead (async_op=False) gives the same result."""
    _, results = two
    for res in results:
        assert res[f"{method}-type2"]["worst"] <= 1e-6, res[f"{method}-type2"]["worst"]
        assert all(rep.overlapped for rep in res[f"{method}-type2"]["reports"])
        assert not any(rep.overlapped for rep in res[(method, "torch.float64")]["reports"])  # empirical
    _same(results[0][f"{method}-type2"]["full"], results[1][f"{method}-type2"]["full"])
    if method == "kfac":
        for res in results:
            assert not any(rep.overlapped for rep in res["kfac-type2-sync"]["reports"])
        _close(results[0]["kfac-type2-sync"]["full"], results[0]["kfac-type2"]["full"], 1e-12)


def test_owners_follow_the_measured_cost(two):
    _, results = two
    assert results[0]["measured"] == results[1]["measured"]  # every process, the same owners
    first = results[0]["measured"]["owners"][0]
    # by the estimates it is the smallest of six parts, placed last beside others
    assert len([slot for slot, r in first.items() if r == first[("4", "G")]]) > 1, first
    for owners in results[0]["measured"]["owners"][1:]:
        slow = owners[("4", "G")]
        assert [slot for slot, r in owners.items() if r == slow] == [("4", "G")], owners


def test_a_discarded_window_drops_its_started_exchange(two):
    _, results = two
    for res in results:
        # one warning per step from each KFAC, the single process's and the distributed one
        assert res["discarded"]["worst"] <= 1e-6 and res["discarded"]["warned"] == 6
        assert res["discarded"]["overlapped"]


def test_ekfac_moments_that_overflow_on_one_process_skip_everywhere(two):
    _, results = two
    s0, s1 = results[0]["moments-failure"], results[1]["moments-failure"]
    assert s0["skipped"] == s1["skipped"] == {"0": 1, "2": 1, "4": 1}
    for r in (s0, s1):
        _same(r["states"][1]["layers"], r["states"][2]["layers"])  # step 1: kept
        with pytest.raises(AssertionError):
            _same(r["states"][2]["layers"], r["states"][3]["layers"])  # step 2: updated again
    _same(s0["states"][3], s1["states"][3])


@pytest.mark.parametrize("method", ["kfac", "bkfac", "ekfac"])
def test_grad_workers_alone_hold_their_layers(two, method):
    """grad_worker_fraction = 1 / world: each layer's curvature on one process, the gathered
    state that of every process holding everything."""
    _, results = two
    held = [set(res[f"{method}-workers"]["held"]) for res in results]
    everything = set(results[0][f"{method}-{'full' if method == 'bkfac' else 'workers'}"]["full"]["layers"])
    assert held[0] and held[1] and not held[0] & held[1] and held[0] | held[1] == everything == {"0", "2", "4"}
    for res, mine in zip(results, held, strict=True):
        assert set(res[f"{method}-workers"]["state"]["layers"]) == mine
    # (EKFAC gathers rows when layers live on their workers; with every process holding every
    # layer it sends Gram factors and moments by default here, fewer bytes)
    reference = results[0][{"bkfac": "bkfac-full", "ekfac": "ekfac-rows"}.get(method, (method, "torch.float64"))]
    _close(results[0][f"{method}-workers"]["full"], reference["full"], 1e-12)
    # a process receives no decomposition of the layers it does not hold: fewer bytes
    assert results[0][f"{method}-workers"]["reports"][0].bytes < reference["reports"][0].bytes


def test_compressed_statistics_travel_in_fewer_bytes(two):
    """A factor whose rows outnumber its width travels as the triangular factor of their QR."""
    _, results = two
    for res in results:
        compressed = res[("bkfac", "torch.float64")]["reports"][-1].statistics_bytes
        rows = res["bkfac-rows"]["reports"][-1].statistics_bytes
        assert 0 < compressed < rows, (compressed, rows)


def test_grad_workers_send_the_preconditioned_gradients(two):
    _, results = two
    reports = [res["kfac-workers"]["reports"][-1] for res in results]
    assert all(rep.bytes > 0 for rep in reports)


def test_bf16_statistics_keep_identical_factors(two):
    _, results = two
    _same(results[0]["bkfac-bf16"]["state"], results[1]["bkfac-bf16"]["state"])
    assert results[0]["bkfac-bf16"]["worst"] < 0.1  # bf16 rounding of the rows, not an error


def test_factors_outnumber_ranks_and_owners_balance(two):
    _, results = two
    rep = results[0][("kfac", "torch.float64")]["reports"][0]  # step 0: every factor is due
    assert len(rep.owners) == 6 and set(rep.owners.values()) == {0, 1}
    assert rep.idle_ranks == 0 and rep.bytes > 0
    assert rep == results[1][("kfac", "torch.float64")]["reports"][0]._replace(bytes=rep.bytes,
                                                                                seconds=rep.seconds)
    off = results[0][("kfac", "torch.float64")]["reports"][1]  # step 1: no EVD due (T_inv=2)
    assert off.owners == {} and off.idle_ranks == 0


def test_failure_on_one_rank_is_broadcast_and_the_state_kept(two):
    _, results = two
    f0, f1 = results[0]["failure"], results[1]["failure"]
    assert f0["failed"] and f0["failed"] == f1["failed"]
    assert all(f0["owners"][slot] == 1 for slot in f0["failed"])
    failed_layers = {layer for layer, _ in f0["failed"]}
    for f in (f0, f1):
        assert f["skipped"] == dict.fromkeys(failed_layers, 1)
        assert any("injected failure" in w for w in f["warnings"])
        for layer in failed_layers:
            _same(f["before"]["layers"][layer], f["after"]["layers"][layer])
    _same(f0["after"], f1["after"])
    for layer in set(f0["after"]["layers"]) - failed_layers:  # the others were updated
        assert f0["after"]["layers"][layer]["state"]["A"]["n_stats"] == 3


def test_failure_on_a_worker_is_broadcast_and_its_layers_kept(two):
    """One worker per layer: the layers of rank 1 fail there; rank 0, which holds none of them,
    counts the failure without a state, and both go on."""
    _, results = two
    f0, f1 = results[0]["failure-workers"], results[1]["failure-workers"]
    assert f0["failed"] and f0["failed"] == f1["failed"]
    failed_layers = {layer for layer, _ in f0["failed"]}
    assert failed_layers == set(f1["held"]) and not failed_layers & set(f0["held"])
    assert f1["skipped"] == dict.fromkeys(failed_layers, 1) and f0["skipped"] == {}
    _same(f0["after"], f1["after"])
    for layer in failed_layers:
        _same(f0["before"]["layers"][layer], f0["after"]["layers"][layer])
    assert f0["after"]["skipped_updates"] == dict.fromkeys(failed_layers, 1)
    assert any("injected failure" in w for w in f1["warnings"])
    for layer in set(f0["after"]["layers"]) - failed_layers:  # rank 0's layers were updated
        assert f0["after"]["layers"][layer]["state"]["A"]["n_stats"] == 3


def test_max_failures_raises_on_every_process_together(two):
    _, results = two
    raised = [res["failure-limit"]["raised"] for res in results]
    assert raised[0] is not None and raised[1] is not None
    assert raised[0][0] == raised[1][0] == 2, raised  # the second consecutive failure
    assert all("max_failures=2" in r[1] for r in raised)


def test_three_processes_more_ranks_than_factors(three):
    for res in three:
        assert res["one-layer"]["worst"] <= 1e-6
        assert res["rkfac"]["worst"] <= 1e-4
    rep = three[0]["one-layer"]["reports"][0]
    assert len(rep.owners) == 2 and rep.idle_ranks == 1
    _same(three[0]["one-layer"]["state"], three[2]["one-layer"]["state"])


def test_checkpoint_of_two_processes_resumes_on_three(two, three):
    _, results = two
    _same(results[0]["ckpt-state"], results[1]["ckpt-state"])
    for res in three:
        assert res["resume"]["steps"] == 4
        assert res["resume"]["worst"] <= 1e-6
    _same(three[0]["resume"]["state"], three[1]["resume"]["state"])
    _same(three[0]["resume"]["state"], three[2]["resume"]["state"])


def test_checkpoint_gathered_from_workers_resumes_on_three(two, three):
    _, results = two
    _same(results[0]["ckpt-workers-state"], results[1]["ckpt-workers-state"])
    _close(results[0]["ckpt-workers-state"], results[0]["ckpt-state"], 1e-12)
    held = [set(res["resume-workers"]["held"]) for res in three]
    assert all(len(h) == 1 for h in held) and set.union(*held) == {"0", "2", "4"}
    for res in three:
        assert res["resume-workers"]["worst"] <= 1e-6
        assert set(res["resume-workers"]["held_end"]) == set(res["resume-workers"]["held"])
    _same(three[0]["resume-workers"]["full"], three[2]["resume-workers"]["full"])
    _close(three[0]["resume-workers"]["full"]["layers"], three[0]["resume-workers"]["ref"]["layers"], 1e-9)


# ---------------------------------------------------------------------------- without processes
def test_assign_owners_is_greedy_by_cost_not_round_robin():
    assert assign_owners([8.0, 8.0, 1.0, 1.0], 2) == [0, 1, 0, 1]
    assert assign_owners([1.0, 8.0, 1.0, 8.0], 2) == [0, 0, 1, 1]
    assert assign_owners([5.0], 3) == [0]
    assert assign_owners([], 2) == []


def test_assign_owners_keeps_each_task_on_its_candidates():
    # each task on the least loaded of its layer's workers
    assert assign_owners([1.0, 8.0, 1.0, 8.0], 2, candidates=[[1], [1], [0, 1], [0, 1]]) == [1, 1, 0, 0]
    assert assign_owners([3.0, 3.0, 3.0], 3, candidates=[[2], [2], [2]]) == [2, 2, 2]
    for bad in ([[0]], [[0], []], [[0], [3]]):
        with pytest.raises(ValueError, match="candidates"):
            assign_owners([1.0, 1.0], 3, candidates=bad)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"grad_worker_fraction": 0.0}, ValueError, "grad_worker_fraction"),
    ({"grad_worker_fraction": 1.5}, ValueError, "grad_worker_fraction"),
    ({"comm_dtype": torch.float16}, TypeError, "comm_dtype"),
    ({"statistics": "dense"}, ValueError, "statistics"),
    ({"async_op": 1}, TypeError, "async_op"),
])
def test_distributed_refuses_bad_options(kwargs, error, name):
    with pytest.raises(error, match=name):
        Distributed(**kwargs)


def test_kfac_distributed_needs_a_process_group():
    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is initialised in this process")
    model = _model(torch.float64)
    with pytest.raises(ValueError, match="distributed"):
        KFAC(model, "kfac", distributed=True)
    with pytest.raises(TypeError, match="distributed"):
        KFAC(model, "kfac", distributed="yes")


# ---------------------------------------------------------------------------- the scripts
def _run_script(*args: str, timeout: int = 120) -> str:
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("fraction", ["1", "0.5"])
def test_torch_distributed_example_runs(fraction):
    out = _run_script("examples/torch_distributed.py", "--steps", "12", "--grad-worker-fraction", fraction)
    assert "identical checkpoint of the curvature on all 2 processes: True" in out
    losses = [float(line.split()[3]) for line in out.splitlines() if line.startswith("step")]
    assert losses[-1] < losses[0]
    held = [line.split("layers")[1].strip() for line in out.splitlines() if "holds the curvature" in line]
    if fraction == "1":
        assert held == ["['0', '2', '4']"] * 2
    else:
        assert len(held) == 2 and held[0] != held[1]


def test_distributed_evidence_quick():
    out = _run_script("evidence/torch_distributed.py", "--quick", "--methods", "kfac", "bkfac@0.5")
    assert "bytes/step" in out and "idle ranks/step" in out and "bkfac@0.5" in out and "curvature held" in out
