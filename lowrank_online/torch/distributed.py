"""Data-parallel curvature under ``torch.distributed``: the factors of the whole batch.

:class:`Distributed` is the option object of ``KFAC(..., distributed=...)``. On each statistics
step every process of the group that holds a layer ends with the factors of the
*concatenated* batch:

* methods whose factors are all dense (kfac, rkfac) all-reduce each layer's ``a^T a`` and
  ``g^T g`` (a :class:`~lowrank_online.curvature.Gram` each) when that is fewer bytes than the
  rows, else gather the rows; EKFAC likewise, plus one all-reduce of the moments of every
  process's rows in the new eigenbasis, which its scalings need;
* the B-methods gather each factor's rows or, where they outnumber its width, their triangular
  QR factor; the pair and Kronecker-sum families (and EKFAC when its rows are fewer bytes, or
  its layers live on their workers) need the rows of ``a`` and ``g``: they are all-gathered,
  so every process feeds exactly the batch a single process would;
* each due decomposition (a K-factor's EVD, randomized EVD or B-update; EKFAC's eigenbasis; the
  whole update of the other families) is computed by one owner process, chosen greedily by
  cost (:func:`assign_owners`; each part's time as its owner last measured it, estimated
  flops before), and broadcast to the others, which install it
  (:meth:`~lowrank_online.curvature.KFACPreconditioner.update` with ``decompositions=``);
* with ``grad_worker_fraction < 1`` a layer's curvature lives on its workers only: its
  decompositions are computed by one of them and sent to the others, the other processes
  keep nothing of it (:meth:`~lowrank_online.curvature.KFACPreconditioner.release`) and
  receive its preconditioned gradient instead.

A decomposition that fails on its owner is reported to every process, which all take the skip
path (the previous state is kept everywhere, the skip counted), so no process waits for a
broadcast that never comes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .. import _linalg, _validate
from ..curvature import Gram, registry
from ..curvature import factors as _factors

if TYPE_CHECKING:
    from .kfac import KFAC

__all__ = ["Distributed", "StepReport", "assign_owners"]

STATISTICS = ("rows", "gram", "compressed")


@dataclasses.dataclass(frozen=True)
class Distributed:
    r"""How :class:`~lowrank_online.torch.KFAC` shares its curvature work between the processes
    of a ``torch.distributed`` group (pass it as ``KFAC(..., distributed=Distributed(...))``;
    ``distributed=True`` means ``Distributed()``).

    The gradients themselves are not reduced: use ``DistributedDataParallel`` (or all-reduce the
    ``.grad`` yourself) before :meth:`KFAC.step`, as for any optimizer.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The group (default: the default group, which must be initialised before :class:`KFAC`
        is built).
    grad_worker_fraction : float
        Fraction of the processes that hold and apply each layer's curvature, in
        ``[1 / world_size, 1]`` (kfac-pytorch's KAISA knob, between its communication- and
        memory-optimal ends). ``1`` (default): every process holds every layer's factors and
        decompositions and preconditions every gradient itself; no gradient travels. Smaller:
        each layer has ``round(fraction * world_size)`` *workers* (at least one; layers assigned
        to processes by cost): only they hold its factors and decompositions (computed by one
        of them and sent to the others, not to every process) and compute its preconditioned
        gradient, which they send to the other processes, one gradient-sized message per layer
        and process. At ``1 / world_size`` each layer's curvature lives on one process: the
        memory of the curvature is divided by the world size, for a gradient sent per layer.
        :meth:`KFAC.state_dict` then gathers the layers from their workers (call it on every
        process), and :meth:`KFAC.load_state_dict` keeps on each process the layers it works on.
    comm_dtype : torch.dtype, optional
        dtype in which the statistics travel: the factors' dtype (default) or
        ``torch.bfloat16`` (half the bytes; every process, the sender included, then uses the
        rounded statistics, so the factors stay identical). Decompositions always travel in the
        factors' dtype (eigenvectors rounded to bf16 are not orthonormal).
    statistics : {None, "rows", "gram", "compressed"}
        What travels. For the methods that can take either (kfac, rkfac, and EKFAC when every
        process holds every layer), None (default) picks the fewer bytes per layer,
        ``N (d_a + d_g)`` rows against ``d_a^2 + d_g^2`` Gram entries (EKFAC: ``+ d_a d_g``
        moments); ``"gram"`` forces the Gram all-reduce for them. The other methods of the
        K-FAC family (the B-methods, ``auto``) maintain each factor from its own rows, so by
        default (and with ``"compressed"``, which extends it to kfac and rkfac) a process whose
        ``N`` rows of ``a`` outnumber their width ``d_a`` sends instead the ``d_a x d_a``
        triangular factor ``R`` of their QR decomposition (``R^T R = a^T a``), and likewise for
        ``g``: the gathered blocks have the Gram matrix of the concatenated batch, so the
        B-update is the one of that batch up to rounding, for ``min(N, d)`` rows per factor
        and process (convolutions' patch rows, sequence positions). ``"rows"`` gathers the
        rows as they are. The pair and Kronecker-sum families, whose statistics pair each row of
        ``a`` with its row of ``g``, always gather rows.
    async_op : bool
        Issue each step's collectives together as asynchronous work and wait once (default
        True), and with the ``"mc"`` / ``"type2"`` Fisher issue the statistics at the end of
        the forward pass, so that they travel during the backward pass; False waits on each
        collective in :meth:`KFAC.step` (for debugging, or to measure the overlap).

    Raises
    ------
    TypeError, ValueError
        An option has the wrong type or is out of range; the message names it.

    Examples
    --------
    >>> import torch
    >>> from lowrank_online.torch import Distributed
    >>> Distributed(grad_worker_fraction=0.5, comm_dtype=torch.bfloat16)
    Distributed(group=None, grad_worker_fraction=0.5, comm_dtype=torch.bfloat16, statistics=None, async_op=True)
    """

    group: Any = None
    grad_worker_fraction: float = 1.0
    comm_dtype: torch.dtype | None = None
    statistics: str | None = None
    async_op: bool = True

    def __post_init__(self) -> None:
        fraction = _validate.check_real(self.grad_worker_fraction, "grad_worker_fraction", low=0.0, low_open=True)
        if fraction > 1.0:
            raise ValueError(f"`grad_worker_fraction` must be in (0, 1], got {self.grad_worker_fraction}")
        object.__setattr__(self, "grad_worker_fraction", fraction)
        if self.comm_dtype is not None and self.comm_dtype not in (torch.float32, torch.float64, torch.bfloat16):
            raise TypeError(f"`comm_dtype` must be None, torch.float32, torch.float64 or torch.bfloat16, "
                            f"got {self.comm_dtype}")
        if self.statistics is not None and self.statistics not in STATISTICS:
            raise ValueError(f"`statistics` must be None or one of {STATISTICS}, got {self.statistics!r}")
        if not isinstance(self.async_op, bool):
            raise TypeError(f"`async_op` must be a bool, got {type(self.async_op).__name__}")


class StepReport(NamedTuple):
    """What one :meth:`KFAC.step` under :class:`Distributed` did (``KFAC.distributed_report``).

    ``bytes``: payload bytes this process handed to or received from collectives (counts,
    statistics, decompositions, preconditioned gradients; an all-gather counts the whole
    gathered buffer, an all-reduce or a broadcast its tensor once). ``owners``: ``{(layer,
    part): rank}`` of the decompositions computed this step. ``idle_ranks``: processes that
    computed none of them (0 when none was due). ``failed``: ``{(layer, part): message}``.
    ``seconds``: wall time of the step's curvature work on this process.
    ``statistics_bytes``: the part of ``bytes`` that is the counts and the statistics.
    ``overlapped``: whether the statistics were issued at the end of the forward pass (so
    that they travelled during the backward pass) rather than in :meth:`KFAC.step`.
    """

    step: int
    bytes: int
    owners: dict[tuple[str, str], int]
    idle_ranks: int
    failed: dict[tuple[str, str], str]
    seconds: float
    statistics_bytes: int = 0
    overlapped: bool = False


def assign_owners(costs: list[float], world_size: int, candidates: list[list[int]] | None = None) -> list[int]:
    """Owner rank of each task: largest first, each to the least loaded rank (ties: lowest rank).

    The longest-processing-time rule: the busiest rank finishes within 4/3 of the best possible
    makespan (Graham 1969), where round-robin by layer can put the two widest factors on one
    rank. ``candidates[i]``, when given, lists the ranks task ``i`` may go to (the workers of
    its layer).

    Examples
    --------
    >>> assign_owners([1.0, 8.0, 1.0, 8.0], 2)
    [0, 0, 1, 1]
    >>> assign_owners([1.0, 8.0, 1.0, 8.0], 2, candidates=[[1], [1], [0, 1], [0, 1]])
    [1, 1, 0, 0]
    """
    world_size = _validate.check_int(world_size, "world_size", minimum=1)
    if candidates is not None:
        if len(candidates) != len(costs):
            raise ValueError(f"`candidates` must list the ranks of each of the {len(costs)} tasks, "
                             f"got {len(candidates)} lists")
        if any(not c or any(not 0 <= int(r) < world_size for r in c) for c in candidates):
            raise ValueError(f"`candidates` must be non-empty lists of ranks in [0, {world_size})")
    load = [0.0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        allowed = range(world_size) if candidates is None else [int(r) for r in candidates[i]]
        r = min(allowed, key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += float(costs[i])
    return owners


def check(distributed: Any) -> Distributed | None:
    """The :class:`Distributed` of ``KFAC(distributed=...)``, with an initialised group."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        distributed = Distributed()
    if not isinstance(distributed, Distributed):
        raise TypeError(f"`distributed` must be None, a bool or a lowrank_online.torch.Distributed, "
                        f"got {type(distributed).__name__}")
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("`distributed` needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group) before KFAC is built")
    return distributed


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Work:
    """The collectives of one phase: issued together (asynchronously), waited on once."""

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous
        self.handles: list[Any] = []

    def add(self, handle: Any) -> None:
        if handle is None:
            return
        if self.asynchronous:
            self.handles.append(handle)
        else:
            handle.wait()

    def wait(self) -> None:
        for h in self.handles:
            h.wait()
        self.handles = []


class _Exchange(NamedTuple):
    """A statistics exchange in flight: each layer's finishing function, the parts due (known
    from the counts), the work to wait for, the bytes so far, the seconds spent issuing it, and
    this process's rows of the layers whose Gram factors travel with moments (EKFAC), for the
    moments in the eigenbasis once it is known."""

    pending: dict[str, Any]
    due: dict[str, tuple[str, ...]]
    work: _Work
    bytes: int
    seconds: float
    own_rows: dict[str, tuple[Any, Any]]


class Session:
    """The collective side of one :class:`KFAC`: every method is called on every process."""

    def __init__(self, options: Distributed, kfac: KFAC) -> None:
        dist = torch.distributed
        self.options = options
        self.group = options.group
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.kfac = kfac
        self.bytes = 0
        self.report: StepReport | None = None
        devices = {a.module.weight.device for a in kfac._adapters.values()}
        self.device = devices.pop() if len(devices) == 1 else torch.device("cpu")
        self.n_workers = max(1, min(self.world, round(options.grad_worker_fraction * self.world)))
        # Fewer workers than processes: each layer's curvature lives on its workers only.
        self.partial = self.n_workers < self.world
        self.layer_workers = self._assign_workers(list(kfac._adapters))
        # Layers whose workers hold curvature, known on every process (the same on all of them:
        # it changes only through decompositions whose outcome every process learns).
        self.curved: set[str] = set()
        self._moment_bytes = 0
        self._started: _Exchange | None = None
        # (layer, part) -> (seconds its owner took last time, its estimated cost then)
        self._timings: dict[tuple[str, str], tuple[float, float]] = {}
        # Consecutive failed updates of the layers held elsewhere (their workers count theirs in
        # the preconditioner), so that every process raises at max_failures together.
        self._failures: dict[str, int] = {}

    def _assign_workers(self, names: list[str]) -> dict[str, list[int]]:
        """The processes that hold and precondition each layer: ``n_workers`` consecutive ranks
        from a first one chosen by the layer's cost (greedy, :func:`assign_owners`)."""
        if not self.partial:
            return {n: list(range(self.world)) for n in names}
        costs = []
        for n in names:
            d_a, d_g = _widths(self.kfac._adapters[n])
            costs.append(float(d_a * d_g * (d_a + d_g)))
        first = assign_owners(costs, self.world)
        return {n: [(r + k) % self.world for k in range(self.n_workers)] for n, r in zip(names, first, strict=True)}

    def holds(self, name: str) -> bool:
        """Whether this process holds (and preconditions with) the curvature of ``name``."""
        return self.rank in self.layer_workers[name]

    def has_curvature(self, name: str) -> bool:
        """Whether ``name`` has curvature on its workers (the same answer on every process)."""
        return name in self.curved if self.partial else name in self.kfac._pre.layers

    # --------------------------------------------------------------- collectives
    def _global(self, rank: int) -> int:
        return rank if self.group is None else torch.distributed.get_global_rank(self.group, rank)

    def all_gather(self, t: torch.Tensor, work: _Work) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.bytes += _nbytes(t) * self.world
        work.add(torch.distributed.all_gather(out, t, group=self.group, async_op=work.asynchronous))
        return out

    def all_reduce(self, t: torch.Tensor, work: _Work) -> torch.Tensor:
        self.bytes += _nbytes(t)
        work.add(torch.distributed.all_reduce(t, group=self.group, async_op=work.asynchronous))
        return t

    def broadcast(self, t: torch.Tensor, src: int, work: _Work) -> torch.Tensor:
        self.bytes += _nbytes(t)
        work.add(torch.distributed.broadcast(t, self._global(src), group=self.group, async_op=work.asynchronous))
        return t

    def send_receive(self, ops: list[Any]) -> None:
        """Point-to-point transfers (``torch.distributed.P2POp``), issued together, waited on."""
        if ops:
            for h in torch.distributed.batch_isend_irecv(ops):
                h.wait()

    def send(self, t: torch.Tensor, dst: int) -> Any:
        self.bytes += _nbytes(t)
        return torch.distributed.P2POp(torch.distributed.isend, t, self._global(dst), group=self.group)

    def receive(self, t: torch.Tensor, src: int) -> Any:
        self.bytes += _nbytes(t)
        return torch.distributed.P2POp(torch.distributed.irecv, t, self._global(src), group=self.group)

    def all_gather_object(self, obj: Any) -> list[Any]:
        import pickle

        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        self.bytes += sum(len(pickle.dumps(o)) for o in out)
        return out

    # --------------------------------------------------------------- statistics step
    def start(self) -> None:
        """Issue this statistics step's exchange as soon as its statistics are complete: at the
        end of the window's last forward pass when the Fisher's backward passes run inside it
        (``"mc"``, ``"type2"``), so that the transfers overlap the user's backward pass (and
        DDP's gradient all-reduce); :meth:`feed` then only waits for them. A collective: every
        process calls it at the same point (they run the same forward passes). Nothing with
        ``async_op=False``, which keeps every collective in :meth:`feed`."""
        if not self.options.async_op:
            return
        self.drop()
        self._started = self._begin()

    def drop(self) -> None:
        """Forget an exchange started for a window that is discarded (waiting for it first:
        every process issued it)."""
        started, self._started = self._started, None
        if started is not None:
            started.work.wait()

    def feed(self) -> None:
        """The distributed replacement of ``KFAC._feed``: exchange, decompose, install."""
        started, self._started = self._started, None
        self._complete(started if started is not None else self._begin(), started is not None)

    def _begin(self) -> _Exchange:
        """Counts, then every layer's statistics issued as asynchronous work."""
        kfac = self.kfac
        pre = kfac._pre
        start = time.perf_counter()
        self.bytes = 0
        names = list(kfac._adapters)
        # 1. counts: terms of the loss and rows per layer on every process, and (when layers live
        # on their workers only) each held layer's due decompositions, which only its workers know
        local = [float(sum(fwd.terms for fwd in kfac._window))] + [float(kfac._row_count(n)) for n in names]
        if self.partial:
            local += [float(self._due_mask(n)) for n in names]
        counts = self.all_gather(torch.tensor(local, dtype=torch.float64), _Work(False))
        counts = torch.stack(counts)  # world x (1 + layers [+ layers])
        terms = float(counts[:, 0].sum())
        due = {}
        if self.partial:
            for i, name in enumerate(names):
                mask = int(counts[self.layer_workers[name][0], 1 + len(names) + i])
                parts = registry.lookup(pre.method_of(name)).parts
                due[name] = tuple(p for j, p in enumerate(parts) if mask >> j & 1)
        work = _Work(self.options.async_op)
        pending: dict[str, Any] = {}
        own_rows: dict[str, tuple[Any, Any]] = {}
        for i, name in enumerate(names):
            rows_per_rank = [int(v) for v in counts[:, 1 + i].tolist()]
            total = sum(rows_per_rank)
            if total == 0:
                continue
            pending[name] = self._exchange(name, rows_per_rank, terms, work, own_rows)
        return _Exchange(pending, due, work, self.bytes, time.perf_counter() - start, own_rows)

    def _complete(self, exchange: _Exchange, early: bool) -> None:
        kfac = self.kfac
        pre = kfac._pre
        start = time.perf_counter()
        self.bytes = exchange.bytes
        exchange.work.wait()
        skipped = []
        stats: dict[str, tuple[Any, Any]] = {}
        for name, finish in exchange.pending.items():
            a, g = finish()
            if not (_finite(a) and _finite(g)):
                skipped.append(name)
                continue
            stats[name] = (a, g)
        kfac._window = []
        self._decompose_and_install(stats, exchange.due, exchange.own_rows)
        for name, (a, g) in stats.items():
            kfac._fed[name] += 1
            if kfac.keep_statistics:
                kfac._last[name] = (a, g)
        if skipped:
            import warnings

            warnings.warn(f"KFAC: the statistics of {skipped} at step {pre.steps} are not finite (fp16 overflow?); "
                          "their curvature update is skipped and their curvature kept", RuntimeWarning, stacklevel=5)
        report = self.report
        self.report = report._replace(bytes=self.bytes, seconds=exchange.seconds + time.perf_counter() - start,
                                      statistics_bytes=exchange.bytes + self._moment_bytes, overlapped=early)

    def _due_mask(self, name: str) -> int:
        """The parts of a held layer that are due, as bits in the order of the method's parts
        (0 for a layer held elsewhere); read without reserving the index of a new layer."""
        if not self.holds(name):
            return 0
        pre = self.kfac._pre
        parts = registry.lookup(pre.method_of(name)).parts
        due = pre.decompositions_due(name) if name in pre.layers else parts
        return sum(1 << j for j, p in enumerate(parts) if p in due)

    def _uses_gram(self, name: str, rows: int) -> bool:
        spec = registry.lookup(self.kfac._pre.method_of(name))
        # EKFAC's moments are taken in the new eigenbasis by every process with rows, which in
        # the memory-optimal mode does not hold the layer: it gathers rows there.
        moments = spec.takes_moments and not self.partial
        if not (spec.takes_gram or moments):
            return False
        if self.options.statistics is not None:
            return self.options.statistics == "gram"
        d_a, d_g = _widths(self.kfac._adapters[name])
        return d_a * d_a + d_g * d_g + (d_a * d_g if moments else 0) < rows * (d_a + d_g)

    def _exchange(self, name: str, rows_per_rank: list[int], terms: float, work: _Work,
                  own_rows: dict[str, tuple[Any, Any]]) -> Any:
        """Issue the exchange of one layer's statistics; returns the function that finishes it.
        A layer whose Gram factors travel with moments leaves its rows in ``own_rows``."""
        kfac = self.kfac
        total = sum(rows_per_rank)
        dt = kfac.factor_dtype
        comm = self.options.comm_dtype or dt
        d_a, d_g = _widths(kfac._adapters[name])
        got = kfac._rows(name, totals=(total, terms))
        if got is None:
            a = torch.zeros((0, d_a), dtype=dt, device=self.device)
            g = torch.zeros((0, d_g), dtype=dt, device=self.device)
        else:
            a, g = got
        if self._uses_gram(name, total):
            if registry.lookup(kfac._pre.method_of(name)).takes_moments:
                own_rows[name] = (a, g)
            buf = torch.cat([(a.T @ a).reshape(-1), (g.T @ g).reshape(-1)]).to(comm)
            self.all_reduce(buf, work)

            def finish() -> tuple[Any, Any]:
                full = buf.to(dt)
                A = full[: d_a * d_a].reshape(d_a, d_a) / total
                G = full[d_a * d_a:].reshape(d_g, d_g) / total
                return Gram(A, total), Gram(G, total)

            return finish
        if self._compresses(name, rows_per_rank):
            return self._exchange_compressed(a, g, rows_per_rank, total, work)
        most = max(rows_per_rank)
        buf = torch.zeros((most, d_a + d_g), dtype=comm, device=self.device)
        n = a.shape[0]
        buf[:n, :d_a] = a
        buf[:n, d_a:] = g
        parts = self.all_gather(buf, work)

        def finish() -> tuple[Any, Any]:
            rows = torch.cat([p[:r] for p, r in zip(parts, rows_per_rank, strict=True)]).to(dt)
            return rows[:, :d_a].contiguous(), rows[:, d_a:].contiguous()

        return finish

    def _compresses(self, name: str, rows_per_rank: list[int]) -> bool:
        """Whether the layer's factors travel as triangular factors (some process has more rows
        than a factor is wide, and the method keeps each factor from its own rows)."""
        if self.options.statistics not in (None, "compressed"):
            return False
        spec = registry.lookup(self.kfac._pre.method_of(name))
        if not spec.unpaired_rows or (spec.takes_gram and self.options.statistics is None):
            return False
        d_a, d_g = _widths(self.kfac._adapters[name])
        return any(n > min(d_a, d_g) for n in rows_per_rank)

    def _exchange_compressed(self, a: Any, g: Any, rows_per_rank: list[int], total: int, work: _Work) -> Any:
        """All-gather, per factor, each process's rows or, where they outnumber the width, the
        triangular factor of their QR decomposition (same Gram matrix, ``min(N, d)`` rows).

        The preconditioner averages ``X^T X / n`` over the rows it is given: the two gathered
        blocks are padded with zero rows to one count ``k`` and scaled by ``sqrt(k / N)``,
        which gives back ``a^T a / N`` and ``g^T g / N`` of the concatenated batch exactly.
        """
        kfac = self.kfac
        dt = kfac.factor_dtype
        comm = self.options.comm_dtype or dt
        d_a, d_g = a.shape[1], g.shape[1]
        ka = [min(n, d_a) for n in rows_per_rank]
        kg = [min(n, d_g) for n in rows_per_rank]
        ra, rg = _triangular(a), _triangular(g)
        offset = max(ka) * d_a
        buf = torch.zeros(offset + max(kg) * d_g, dtype=comm, device=self.device)
        buf[: ra.numel()] = ra.reshape(-1)
        buf[offset: offset + rg.numel()] = rg.reshape(-1)
        parts = self.all_gather(buf, work)

        def finish() -> tuple[Any, Any]:
            A = torch.cat([p[: n * d_a].reshape(n, d_a) for p, n in zip(parts, ka, strict=True)]).to(dt)
            G = torch.cat([p[offset: offset + n * d_g].reshape(n, d_g) for p, n in zip(parts, kg, strict=True)]).to(dt)
            k = max(A.shape[0], G.shape[0])
            scale = math.sqrt(k / total)
            return _padded(A, k) * scale, _padded(G, k) * scale

        return finish

    def _slot_cost(self, name: str, part: str, a: Any, g: Any) -> float:
        pre = self.kfac._pre
        config = pre.config
        spec = registry.lookup(pre.method_of(name))
        n = a.rows if isinstance(a, Gram) else a.shape[0]
        d_a, d_g = _widths(self.kfac._adapters[name])
        step = pre.steps

        def side(kind: str, d: int) -> float:
            if kind == "by-cost":
                kind = _factors.choose_kind(config, d, n, step)
            return _factors.decomposition_flops(kind, d, n, config, step)

        if part in ("A", "G"):
            return side(spec.kinds[0 if part == "A" else 1], d_a if part == "A" else d_g)
        extra = 2.0 * n * d_a * d_g if part == "eigenbasis" else 0.0
        return side("eigh", d_a) + side("eigh", d_g) + extra

    def _costs(self, slots: list[tuple[str, str]], estimates: dict[tuple[str, str], float]) -> list[float]:
        """Each due decomposition's cost for :func:`assign_owners`, in seconds: its owner's last
        measured time, scaled by how its estimate changed since (the rows of a B-update); a
        decomposition not timed yet at the rate (estimated flops per second) of those that
        were. Before any was timed, the estimates themselves (flops weighted by kind,
        :func:`~lowrank_online.curvature.factors.decomposition_flops`). The timings reach
        every process with the decompositions' descriptions, so every process computes the
        same costs and the same owners."""
        timed = [self._timings[s] for s in slots if s in self._timings]
        seconds = sum(t for t, _ in timed)
        flops = sum(e for _, e in timed)
        if seconds <= 0.0 or flops <= 0.0:  # nothing timed yet
            return [estimates[s] for s in slots]
        rate = flops / seconds
        out = []
        for s in slots:
            if s in self._timings:
                t, then = self._timings[s]
                out.append(t * (estimates[s] / then if then > 0.0 else 1.0))
            else:
                out.append(estimates[s] / rate)
        return out

    def _decompose_and_install(self, stats: dict[str, tuple[Any, Any]], due: dict[str, tuple[str, ...]],
                               own_rows: dict[str, tuple[Any, Any]]) -> None:
        """Owners compute the due decompositions; each goes to the processes holding its layer
        (every process, or the layer's workers), which install it or all take the skip path."""
        pre = self.kfac._pre
        slots = []
        for name in stats:
            # called on every process in the same order: a new layer's index (the seed of its
            # randomized decompositions) is then the one a single process would give it
            mine = pre.decompositions_due(name)
            slots += [(name, part) for part in (due[name] if self.partial else mine)]
        estimates = {(name, part): self._slot_cost(name, part, *stats[name]) for name, part in slots}
        costs = self._costs(slots, estimates)
        candidates = [self.layer_workers[name] for name, _ in slots] if self.partial else None
        owners = assign_owners(costs, self.world, candidates) if slots else []
        owner_of = dict(zip(slots, owners, strict=True))
        # 2. the owners compute; a failure is a message instead of an entry
        mine: dict[str, list[str]] = {}
        for (name, part), r in owner_of.items():
            if r == self.rank:
                mine.setdefault(name, []).append(part)
        entries: dict[tuple[str, str], Any] = {}
        local: dict[tuple[str, str], Any] = {}
        for name, parts in mine.items():
            a, g = stats[name]
            # one part at a time, timed: the next assignment uses the measured cost (each call
            # repeats only the factors' averages, d^2 work beside a decomposition's)
            for p in parts:
                begin = time.perf_counter()
                try:
                    got = pre.decompose(name, a, g, parts=[p])
                except _linalg.DecompositionError as err:
                    local[(name, p)] = ("failed", str(err))
                    continue
                except Exception as err:  # noqa: BLE001 - reported to every process, then raised everywhere
                    local[(name, p)] = ("error", f"{type(err).__name__}: {err}")
                    continue
                spec, arrays = _flatten(got[p])
                entries[(name, p)] = got[p]
                local[(name, p)] = ("ok", spec, [tuple(x.shape) for x in arrays], time.perf_counter() - begin)
        failed: dict[tuple[str, str], str] = {}
        if slots:
            # 3. what each owner produced (or why not), then the arrays themselves
            described: dict[tuple[str, str], Any] = {}
            for theirs in self.all_gather_object(local):
                for slot, what in theirs.items():
                    described[slot] = what
            for slot, what in described.items():
                if what[0] == "ok":  # the same on every process, and so are the next costs
                    self._timings[slot] = (what[3], estimates[slot])
            errors = [f"{slot}: {what[1]} (rank {owner_of[slot]})" for slot, what in described.items()
                      if what[0] == "error"]
            if errors:
                raise RuntimeError("KFAC: a decomposition raised on another process: " + "; ".join(errors))
            work = _Work(self.options.async_op)
            buffers, ops = {}, []
            for slot in slots:
                what = described[slot]
                owner = owner_of[slot]
                if what[0] == "failed":
                    failed[slot] = f"{what[1]} (computed on rank {owner})"
                    continue
                size = sum(math.prod(s) for s in what[2])
                if owner == self.rank:
                    buf = torch.cat([x.reshape(-1) for x in _flatten(entries[slot])[1]]) if size else \
                        torch.zeros(0, dtype=self.kfac.factor_dtype, device=self.device)
                else:
                    buf = torch.empty(size, dtype=self.kfac.factor_dtype, device=self.device)
                if not self.partial:
                    buffers[slot] = self.broadcast(buf, owner, work)
                    continue
                # only the layer's other workers receive it
                receivers = [r for r in self.layer_workers[slot[0]] if r != owner]
                if self.rank == owner:
                    ops += [self.send(buf, r) for r in receivers if size]
                elif self.rank in receivers:
                    if size:
                        ops.append(self.receive(buf, owner))
                    buffers[slot] = buf
            self.send_receive(ops)
            work.wait()
            for slot, buf in buffers.items():
                if owner_of[slot] != self.rank:
                    entries[slot] = _unflatten(described[slot][1], described[slot][2], buf)
        # 4. EKFAC layers fed Gram factors: the sums of every process's moments in the new basis
        moments = self._moments(stats, slots, failed, entries, own_rows)
        # 5. every process holding a layer installs the same entries, or they all take the skip
        # path together (the others count the failure, to raise at max_failures with them)
        for name, (a, g) in stats.items():
            parts = [p for (n, p) in slots if n == name]
            why = "; ".join(failed[(name, p)] for p in parts if (name, p) in failed)
            if not why and name in moments and moments[name] is None:
                why = "the moments of its statistics in the eigenbasis are not finite"
            if not why:
                self.curved.add(name)
            if self.partial and not self.holds(name):
                self._count_failure(name, why)
                continue
            if why:
                pre.skip_update(name, why)
                continue
            given = {p: entries[(name, p)] for p in parts}
            pre.update(name, a, g, decompositions=given or None, moments=moments.get(name))
        busy = set(owners)
        self.report = StepReport(pre.steps, 0, owner_of, self.world - len(busy) if slots else 0, failed, 0.0)

    def _moments(self, stats: dict[str, tuple[Any, Any]], slots: list[tuple[str, str]],
                 failed: dict[tuple[str, str], str], entries: dict[tuple[str, str], Any],
                 own_rows: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
        """EKFAC layers fed Gram factors: each process's :meth:`eigenbasis_moments
        <lowrank_online.curvature.KFACPreconditioner.eigenbasis_moments>` of its own rows in
        the basis the layer is about to hold, all-reduced in one buffer (``d_g x d_a`` per
        layer). ``{layer: total}``, None where it is not finite (every process sees the same
        sum, so all skip together). A local failure (the moments overflow) enters the sum as
        NaN instead of raising, which would leave the others waiting."""
        self._moment_bytes = 0
        pre = self.kfac._pre
        names = [n for n in stats if n in own_rows and not any(m == n for m, _ in failed)]
        if not names:
            return {}
        dt = self.kfac.factor_dtype
        comm = self.options.comm_dtype or dt
        parts = []
        for name in names:
            a, g = own_rows[name]
            d_a, d_g = _widths(self.kfac._adapters[name])
            given = {p: entries[(n, p)] for (n, p) in slots if n == name}
            mine = torch.zeros((d_g, d_a), dtype=dt, device=self.device)
            if a.shape[0]:
                try:
                    mine = pre.eigenbasis_moments(name, a, g, decompositions=given or None)
                except ValueError:
                    mine = torch.full((d_g, d_a), math.nan, dtype=dt, device=self.device)
            parts.append(mine.reshape(-1))
        start = self.bytes
        buf = self.all_reduce(torch.cat(parts).to(comm), _Work(False)).to(dt)
        self._moment_bytes = self.bytes - start
        out: dict[str, Any] = {}
        offset = 0
        for name in names:
            d_a, d_g = _widths(self.kfac._adapters[name])
            m = buf[offset: offset + d_a * d_g].reshape(d_g, d_a)
            offset += d_a * d_g
            out[name] = m if _finite(m) else None
        return out

    def _count_failure(self, name: str, why: str) -> None:
        """The failure count of a layer held elsewhere, as its workers' preconditioner keeps it."""
        if not why:
            self._failures.pop(name, None)
            return
        count = self._failures.get(name, 0) + 1
        self._failures[name] = count
        limit = self.kfac._pre.config.max_failures
        if count >= limit:
            raise _linalg.DecompositionError(
                f"layer {name!r}: {count} consecutive curvature updates failed on its workers (max_failures="
                f"{limit}); the last at step {self.kfac._pre.steps}: {why}")

    # --------------------------------------------------------------- checkpoints
    def gathered_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The preconditioner's ``state_dict`` with every layer, each from its first worker
        (a collective when layers live on their workers; ``state`` itself otherwise)."""
        if not self.partial:
            return state
        first = {n: w[0] for n, w in self.layer_workers.items()}
        mine = {
            "layers": {n: _to(v, "cpu") for n, v in state["layers"].items() if first.get(n) == self.rank},
            "skipped": {n: c for n, c in state["skipped_updates"].items() if first.get(n) == self.rank},
        }
        layers: dict[str, Any] = {}
        skipped: dict[str, int] = {}
        for theirs in self.all_gather_object(mine):
            layers.update({n: _to(v, self.device) for n, v in theirs["layers"].items()})
            skipped.update(theirs["skipped"])
        order = list(self.layer_workers)
        return {**state, "layers": {n: layers[n] for n in order if n in layers},
                "skipped_updates": {n: skipped[n] for n in order if n in skipped}}

    def restored(self) -> None:
        """After a checkpoint is loaded (the same on every process): keep the held layers."""
        pre = self.kfac._pre
        self._failures = {}
        if not self.partial:
            return
        self.curved = set(pre.layers)
        for name in list(pre.layers):
            if not self.holds(name):
                pre.release(name)

    # --------------------------------------------------------------- preconditioning
    def share_steps(
        self, names: list[str], steps: dict[str, Any], shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, Any]:
        """Send each layer's preconditioned gradient from its workers to the other processes."""
        if not self.partial or not names:
            return steps
        start = self.bytes
        ops = []
        out = dict(steps)
        for n in names:
            w = self.layer_workers[n]
            others = [r for r in range(self.world) if r not in w]
            for j, r in enumerate(others):
                src = w[j % len(w)]
                if self.rank == src:
                    ops.append(self.send(steps[n].contiguous(), r))
                elif self.rank == r:
                    out[n] = torch.empty(shapes[n], dtype=self.kfac.factor_dtype, device=self.device)
                    ops.append(self.receive(out[n], src))
        self.send_receive(ops)
        if self.report is not None:
            self.report = self.report._replace(bytes=self.report.bytes + self.bytes - start)
        return out


def _finite(x: Any) -> bool:
    m = x.matrix if isinstance(x, Gram) else x
    return bool(torch.isfinite(torch.linalg.vector_norm(m)))


def _to(v: Any, device: Any) -> Any:
    """A checkpoint entry (nested dicts) with its tensors on ``device``."""
    if isinstance(v, dict):
        return {k: _to(x, device) for k, x in v.items()}
    return v.to(device) if isinstance(v, torch.Tensor) else v


def _flatten(entry: Any) -> tuple[Any, list[torch.Tensor]]:
    """A decomposition entry's structure (arrays replaced by their index) and its arrays."""
    arrays: list[torch.Tensor] = []

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, torch.Tensor):
            arrays.append(v)
            return ("array", len(arrays) - 1)
        return ("value", v)

    return walk(entry), arrays


def _unflatten(spec: Any, shapes: list[tuple[int, ...]], buf: torch.Tensor) -> Any:
    offsets = [0]
    for s in shapes:
        offsets.append(offsets[-1] + math.prod(s))

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if v[0] == "array":
            i = v[1]
            return buf[offsets[i]:offsets[i + 1]].reshape(shapes[i])
        return v[1]

    return walk(spec)


def _triangular(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, or when it has more rows than columns the ``d x d`` factor ``R`` of its QR
    decomposition (``R^T R = x^T x`` up to rounding, backward stable where ``chol(x^T x)``
    would square the condition number)."""
    if x.shape[0] <= x.shape[1]:
        return x
    return torch.linalg.qr(x, mode="r").R


def _padded(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.shape[0] == k:
        return x
    return torch.cat([x, x.new_zeros(k - x.shape[0], x.shape[1])])


def _widths(adapter: Any) -> tuple[int, int]:
    """``(d_a, d_g)`` of a layer: the columns of its ``a`` (ones column included) and ``g``."""
    return adapter.d_in, adapter.d_out
