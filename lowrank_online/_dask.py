"""The Dask backend: tall arrays chunked by rows on the workers, small cores on the client.

Only :mod:`lowrank_online._array` imports this module, and only when it meets the Dask
namespace, so the library imports and runs without Dask.

The chunking model. A tall array (d x k) is chunked along d only; its k columns are one
chunk. Tall products then decompose by row blocks: ``Q @ Z`` is one task per block with the
small ``Z`` broadcast, and ``Q.T @ A`` is a sum of per-block products, reduced on the cluster
to a k x n result of a few kilobytes. Those small results are the only data that reach the
client. There they are factorized with NumPy in float64, and the small factors go back into
the graph as one-chunk arrays.

Round trips. A distributed round trip costs milliseconds, so :meth:`Backend.persist`
submits work without waiting, and :meth:`Backend.to_core` fetches every small result the
algorithm needs at that point in a single ``dask.compute``. It also brings along whatever
was :meth:`~Backend.prefetch`-ed. Small arrays whose graph holds only embedded data
(the cores this backend put back, a user's ``da.from_array`` of a short vector) are
evaluated in-process, without the cluster.
"""

from __future__ import annotations

import math
import numbers
import uuid
from typing import Any

import array_api_compat.numpy as cnp
import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

from ._backend import Backend as InMemoryBackend

__all__: list[str] = []  # private module

# Graphs up to this many tasks that hold nothing but embedded data are evaluated in-process.
_LOCAL_TASKS = 64


def _client() -> Any:
    """The active ``distributed`` client, or None (threaded scheduler, or no distributed)."""
    try:
        from distributed import default_client
    except ImportError:  # dask[array] without distributed
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _graph(x: Any) -> dict:
    return dict(x.__dask_graph__())


def _is_future(value: Any) -> bool:
    return type(value).__name__ == "Future" and hasattr(value, "key")


def _is_task(value: Any) -> bool:
    return hasattr(value, "dependencies") and not _is_data(value)


def _is_data(value: Any) -> bool:
    if isinstance(value, (np.ndarray, np.generic, numbers.Number)):
        return True
    return type(value).__name__ == "DataNode"


def _layers(x: Any) -> int:
    return len(getattr(x.__dask_graph__(), "layers", ())) or 1


def _materialized(x: Any) -> bool:
    """True when ``x`` is held in memory already: persisted futures, or embedded data when
    there is no cluster to send it to (under ``distributed`` an embedded array would travel
    with every graph that reads it, so it is persisted once instead)."""
    if _layers(x) > 1:  # persisted and embedded arrays are one layer of values
        return False
    values = _graph(x).values()
    if _client() is None:
        return all(_is_future(v) or _is_data(v) for v in values)
    return all(_is_future(v) for v in values)


def _local(x: Any) -> bool:
    """True when ``x`` can be evaluated in-process: a small graph over embedded data only.

    A task without dependencies (a random draw, a read from disk) or a future means the data
    lives, or would be produced, elsewhere: such graphs go to the cluster.
    """
    if _layers(x) > 8:
        return False
    graph = _graph(x)
    if len(graph) > _LOCAL_TASKS:
        return False
    for value in graph.values():
        if _is_data(value):
            continue
        if not _is_task(value) or not value.dependencies:
            return False
    return True


def _compute(arrays: list[Any]) -> list[Any]:
    """Evaluate ``arrays`` in at most one round trip.

    Graphs over embedded data are evaluated in-process. Persisted arrays are gathered
    straight from their futures (``dask.compute`` would schedule a task to assemble them, one
    more hop). The rest goes to the scheduler in one ``dask.compute``.
    """
    out: list[Any] = [None] * len(arrays)
    local, held, other = [], [], []
    for i, a in enumerate(arrays):
        if _local(a):
            local.append(i)
        elif _client() is not None and _persisted(a):
            held.append(i)
        else:
            other.append(i)
    if local:
        for i, v in zip(local, dask.compute(*[arrays[i] for i in local], scheduler="sync"), strict=True):
            out[i] = v
    if held and not other:
        graphs = [_graph(arrays[i]) for i in held]
        keys = [list(flatten(arrays[i].__dask_keys__())) for i in held]
        blocks = _client().gather([[g[k] for k in ks] for g, ks in zip(graphs, keys, strict=True)])
        for i, parts in zip(held, blocks, strict=True):
            out[i] = _assemble(arrays[i], parts)
    else:
        other = held + other
    if other:
        for i, v in zip(other, dask.compute(*[arrays[i] for i in other]), strict=True):
            out[i] = v
    return out


def _persisted(x: Any) -> bool:
    return _layers(x) == 1 and all(_is_future(v) for v in _graph(x).values())


def _assemble(x: Any, parts: list[np.ndarray]) -> np.ndarray:
    """The blocks of ``x`` (in key order) as one NumPy array."""
    if len(parts) == 1:
        return np.asarray(parts[0])
    grid = np.empty(x.numblocks, dtype=object)
    for index, part in zip(np.ndindex(*x.numblocks), parts, strict=True):
        grid[index] = part
    return np.block(grid.tolist())


def to_floats(scalars: tuple[Any, ...]) -> tuple[float, ...]:
    values = _compute([s for s in scalars if isinstance(s, da.Array)])
    out = []
    for s in scalars:
        out.append(float(values.pop(0)) if isinstance(s, da.Array) else float(s))
    return tuple(out)


class Backend(InMemoryBackend):
    """Tall arrays stay Dask arrays chunked by rows; cores are NumPy float64 on the client.

    One instance serves one call of an algorithm; it caches by graph name the host values of
    every small array it fetched or embedded, so no small array is fetched twice.
    """

    in_memory = False

    def __init__(self, xp: Any, dev: Any, dtype: Any, *, like: Any = None) -> None:
        super().__init__(xp, dev, dtype, like=like)
        self.cxp = cnp
        self.cdtype = cnp.float64
        chunks = getattr(like, "chunks", None)
        self.rows = tuple(chunks[0]) if chunks else None
        self._host: dict[str, np.ndarray] = {}
        self._pending: dict[str, Any] = {}
        self._watched: tuple[tuple[str, Any], ...] = ()
        self._joined: dict[str, list[Any]] = {}

    # ------------------------------------------------------------------ small results
    def _fetch(self, xs: tuple[Any, ...]) -> list[np.ndarray]:
        todo = {}
        for x in xs:
            if isinstance(x, da.Array) and x.name not in self._host:
                todo[x.name] = x
        if todo:
            for name, x in self._pending.items():
                if name not in self._host:
                    todo.setdefault(name, x)
            names = list(todo)
            try:
                values = _compute([todo[n] for n in names])
            except np.linalg.LinAlgError:
                # A factorization inside the graph (the dense fallback's tall-skinny SVD) met
                # NaN before any core could be tested: name the input that holds it, if any.
                if self._watched:
                    self._blame()
                raise
            for name, value in zip(names, values, strict=True):
                self._host[name] = np.asarray(value)
            self._pending.clear()
        return [self._host[x.name] if isinstance(x, da.Array) else np.asarray(x) for x in xs]

    def to_core(self, *xs: Any) -> Any:
        out = [np.asarray(v, dtype=np.float64) for v in self._fetch(xs)]
        if self._watched and not all(np.isfinite(v).all() for v in out):
            self._blame()
        return out[0] if len(out) == 1 else tuple(out)

    def prefetch(self, *xs: Any) -> None:
        for x in xs:
            if isinstance(x, da.Array) and x.name not in self._host:
                self._pending[x.name] = x

    def watch(self, *named: tuple[str, Any]) -> None:
        self._watched = tuple((name, x) for name, x in named if isinstance(x, da.Array))

    def _blame(self) -> None:
        """A core is not finite: find the watched input that holds NaN or infinity.

        Costs one pass over the watched inputs, on the error path only. Returns silently when
        they are all finite: the core overflowed, which the algorithm handles itself.
        """
        watched, self._watched = self._watched, ()
        flags = _compute([da.all(da.isfinite(x)) for _, x in watched])
        for (name, _), ok in zip(watched, flags, strict=True):
            if not bool(ok):
                raise ValueError(
                    f"`{name}` contains NaN or infinity (found when a small core was computed: "
                    "Dask inputs are checked on the cores, not with a pass of their own)"
                )

    def from_core(self, x: Any) -> Any:
        value = np.asarray(x, dtype=self.dtype)
        arr = da.from_array(value, chunks=value.shape if value.ndim else ())
        self._host[arr.name] = value
        return arr

    def small(self, x: Any) -> Any:
        value = self._fetch((x,))[0]
        if self._watched and not np.isfinite(value).all():
            self._blame()
        return self.from_core(value)

    def all_finite(self, *xs: Any) -> bool:
        return all(bool(np.isfinite(v).all()) for v in self._fetch(xs))

    def column_signs(self, V: Any) -> Any:
        # One task per row block (its column maxima and minima) and one that combines them:
        # two steps, where the generic max/min/compare/where chain takes six.
        if V.ndim != 2 or len(V.chunks[1]) != 1:
            return super().column_signs(V)
        name = f"column-signs-{tokenize(V)}"
        parts = []
        dsk: dict = {}
        for key in flatten(V.__dask_keys__()):
            part = (f"{name}-part", *key[1:])
            dsk[part] = (_extremes, key)
            parts.append(part)
        dsk[(name, 0)] = (_signs, *parts)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[V])
        return da.Array(graph, name, chunks=((V.shape[1],),), dtype=V.dtype, meta=np.empty((0,), V.dtype))

    # ------------------------------------------------------------------ tall arrays
    def persist(self, *xs: Any) -> Any:
        out = list(xs)
        todo = [i for i, x in enumerate(xs) if isinstance(x, da.Array) and not _materialized(x)]
        if todo:
            # Asynchronous under distributed: the next to_core waits for what it needs.
            for i, y in zip(todo, dask.persist(*[xs[i] for i in todo]), strict=True):
                out[i] = y
        return out[0] if len(out) == 1 else tuple(out)

    def matmul(self, a: Any, b: Any) -> Any:
        # Dask's matmul sums over the blocks of the contracted dimension even when there is
        # one: a copy of the whole tall product. With that dimension in one chunk on both
        # sides, a blockwise product is one GEMM per block and nothing else.
        if not (isinstance(a, da.Array) and isinstance(b, da.Array)) or a.ndim != 2 or b.ndim != 2:
            return a @ b
        if len(a.chunks[1]) != 1 or len(b.chunks[0]) != 1:
            return a @ b
        dtype = np.result_type(a.dtype, b.dtype)
        parts = self._joined.get(a.name)
        if parts is not None and len(b.chunks[1]) == 1:
            args: list[Any] = []
            for n, part in enumerate(parts):
                args += [part, f"i{n}"]
            return da.blockwise(
                _rotate, "ij", *args, b, "kj", dtype=dtype, concatenate=True, meta=np.empty((0, 0), dtype)
            )
        return da.blockwise(np.matmul, "ij", a, "ik", b, "kj", dtype=dtype, concatenate=True)

    def residual(self, A: Any, Q: Any, C: Any) -> Any:
        if len(Q.chunks[1]) != 1 or len(C.chunks[0]) != 1 or len(C.chunks[1]) != 1 or len(A.chunks[1]) != 1:
            return A - Q @ C
        return da.blockwise(
            _residual, "ij", A, "ij", Q, "ik", C, "kj", dtype=np.result_type(A.dtype, Q.dtype, C.dtype),
            concatenate=True, meta=np.empty((0, 0), A.dtype),
        )

    def detach(self, *xs: Any) -> Any:
        client = _client()
        out = _detach(client, list(xs)) if client is not None else [self.persist(x) for x in xs]
        return out[0] if len(out) == 1 else tuple(out)

    def join_columns(self, arrays: list[Any]) -> Any:
        # One task per row block (the row chunks agree). The pieces are remembered, so that
        # [Q W] Z (see matmul) is one task per block that never forms [Q W].
        arrays = [a for a in arrays if a.shape[1]] or list(arrays[:1])
        if len(arrays) == 1:
            return arrays[0]
        width = sum(a.shape[1] for a in arrays)
        joined = da.map_blocks(
            _hstack, *arrays, chunks=(arrays[0].chunks[0], (width,)), dtype=arrays[0].dtype,
            meta=arrays[0]._meta,
        )
        self._joined[joined.name] = arrays
        return joined

    def normal(self, rng: np.random.Generator, shape: tuple[int, ...]) -> Any:
        return standard_normal(rng, shape, self.dtype, self.rows)

    def local(self, x: Any) -> tuple[Any, Any]:
        value = self._fetch((x,))[0]
        if self._watched and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            self._blame()
        return value, cnp

    def distribute(self, x: Any, *, tall: bool = False) -> Any:
        x = np.asarray(x)
        if tall and self.rows is not None and sum(self.rows) == x.shape[0]:
            return da.from_array(x, chunks=(self.rows, -1))
        return da.from_array(x, chunks=x.shape if x.ndim else ())


def _hstack(*blocks: np.ndarray) -> np.ndarray:
    return np.concatenate(blocks, axis=1)


def _extremes(block: np.ndarray) -> np.ndarray:
    return np.stack([block.max(axis=0), block.min(axis=0)])


def _signs(*extremes: np.ndarray) -> np.ndarray:
    both = np.stack(extremes)
    positive = both[:, 0, :].max(axis=0) >= -both[:, 1, :].min(axis=0)
    return np.where(positive, 1.0, -1.0).astype(both.dtype)


def _residual(a: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    w = q @ (-c)
    w += a
    return w


def _rotate(*blocks: np.ndarray) -> np.ndarray:
    """``[B_1 ... B_p] @ Z`` for one row block, without forming the concatenation."""
    *parts, z = blocks
    out = None
    start = 0
    for part in parts:
        stop = start + part.shape[1]
        term = part @ z[start:stop]
        if out is None:
            out = term
        else:
            out += term
        start = stop
    return out


# ---------------------------------------------------------------------------------------
# detaching results from the graph that produced them
# ---------------------------------------------------------------------------------------
def _republish(block: np.ndarray, name: str, block_id: tuple[int, ...] | None = None) -> np.ndarray:
    """Runs on the worker that computed ``block``: registers it again, as pure data under the
    key ``(name, *block_id)``, on this same worker (a scatter from inside a task stores the
    object it is given, without a copy). Returns the worker's future of the new key, in a
    one-element object array; it keeps the key alive until the client has taken it over."""
    from distributed import get_client

    key = (name, *block_id)
    out = np.empty((1,) * block.ndim, dtype=object)
    out[(0,) * block.ndim] = get_client().scatter({key: block}, hash=False)[key]
    return out


# What the detach step relies on that distributed does not document: ``Client._send_to_scheduler``,
# the scheduler's "client-desires-keys" stream handler (a client takes over keys it did not
# submit) and ``Future(key, client)`` for a key the client holds no future of. Checked once per
# client (tests/test_dask_private_api.py checks them against the installed distributed): when one
# is missing the stream keeps its lineage and says so once, instead of failing or leaking keys.
PRIVATE_API = (
    "Client._send_to_scheduler",
    "Scheduler.stream_handlers['client-desires-keys']",
    "Future(key, client)",
)
_private_checked: dict[str, bool] = {}


def private_api_missing(client: Any) -> list[str]:
    """The entries of :data:`PRIVATE_API` the installed distributed lacks (one scheduler round trip)."""
    import inspect

    from distributed import Future

    missing = []
    if not callable(getattr(client, "_send_to_scheduler", None)):
        missing.append(PRIVATE_API[0])
    if not client.run_on_scheduler(_desires_keys_handled):
        missing.append(PRIVATE_API[1])
    params = list(inspect.signature(Future.__init__).parameters)
    if params[1:3] != ["key", "client"]:
        missing.append(PRIVATE_API[2])
    return missing


def _desires_keys_handled(dask_scheduler: Any = None) -> bool:
    return "client-desires-keys" in getattr(dask_scheduler, "stream_handlers", {})


def _private_send(client: Any) -> Any:
    """``client._send_to_scheduler`` when every private API of the detach step is there, else None."""
    ok = _private_checked.get(client.id)
    if ok is None:
        missing = private_api_missing(client)
        ok = _private_checked[client.id] = not missing
        if missing:
            import warnings

            warnings.warn(
                f"this version of distributed lacks {', '.join(missing)}: Dask results keep their task "
                "lineage (the scheduler's memory grows along a stream; checkpoint and restart long runs)",
                RuntimeWarning, stacklevel=3,
            )
    return client._send_to_scheduler if ok else None


def _detach(client: Any, arrays: list[Any]) -> list[Any]:
    """Compute arrays and publish their blocks as pure data, so that the scheduler keeps no
    record of the tasks that computed them.

    The scheduler keeps the recipe (lineage) of every key in memory, so that a lost block can
    be recomputed. Along a stream each new basis is computed from the previous one, so the
    recipes would chain back to the first update: some 40 task records per update, never
    freed. Blocks without a recipe end the chain. The publishing task is fused with the last
    blockwise step of each array, so it costs no extra pass, only the wait for the result; a
    lost worker then loses its blocks instead of recomputing them from the whole history
    (checkpoint with ``state_dict()``, see docs/scaling.rst).
    """
    from distributed import Future, wait

    send = _private_send(client)
    out = list(arrays)
    jobs = []
    for pos, x in enumerate(arrays):
        if not isinstance(x, da.Array):
            continue
        if _local(x):  # a small array over embedded data: computed here, carries no recipe
            value = np.asarray(dask.compute(x, scheduler="sync")[0])
            out[pos] = da.from_array(value, chunks=value.shape if value.ndim else ())
            continue
        if send is None or x.ndim == 0:  # keep the lineage
            out[pos] = dask.persist(x)[0]
            continue
        name = f"detached-{uuid.uuid4().hex}"
        wrapper = x.map_blocks(
            _republish, name, dtype=object, meta=np.empty((0,) * x.ndim, dtype=object),
            chunks=tuple((1,) * len(c) for c in x.chunks), token=f"publish-{name}",
        )
        jobs.append((pos, x, name, wrapper))
    if not jobs:
        return out
    wrappers = client.persist([job[3] for job in jobs])
    wait(wrappers)
    # Take the new keys over before the workers drop their own references: this message and
    # the release of the wrappers below travel in order on the client's stream.
    layers, new_keys = [], []
    for _, x, name, _ in jobs:
        layer = {(name, *key[1:]): None for key in flatten(x.__dask_keys__())}
        new_keys += list(layer)
        layers.append(layer)
    futures = {key: Future(key, client) for key in new_keys}
    send({"op": "client-desires-keys", "keys": new_keys, "client": client.id})
    del wrappers
    for (pos, x, name, _), layer in zip(jobs, layers, strict=True):
        graph = HighLevelGraph.from_collections(name, {k: futures[k] for k in layer}, dependencies=())
        out[pos] = da.Array(graph, name, chunks=x.chunks, dtype=x.dtype, meta=x._meta)
    return out


# ---------------------------------------------------------------------------------------
# module-level helpers for _array
# ---------------------------------------------------------------------------------------
def _dim_name(axis: int) -> str:
    return "first" if axis == 0 else "second"


def align_tall(named: tuple) -> tuple[Any, ...]:
    ref_name, ref, ref_axis = _entry(named[0])
    _check_tall(ref_name, ref, ref_axis)
    out = [ref]
    for entry in named[1:]:
        name, x, axis = _entry(entry)
        _check_tall(name, x, axis)
        if x.shape[axis] != ref.shape[ref_axis]:
            out.append(x)  # the caller reports the shape mismatch
            continue
        if tuple(x.chunks[axis]) != tuple(ref.chunks[ref_axis]):
            x = x.rechunk({axis: ref.chunks[ref_axis]})
        out.append(x)
    return tuple(out)


def _entry(entry: tuple) -> tuple[str, Any, int]:
    return (entry[0], entry[1], entry[2] if len(entry) > 2 else 0)


def _check_tall(name: str, x: Any, axis: int) -> None:
    if not isinstance(x, da.Array):
        return
    if any(math.isnan(c) for c in x.chunks[axis]):
        raise ValueError(
            f"`{name}` has unknown chunk sizes along its {_dim_name(axis)} dimension, so its "
            f"rows cannot be aligned with the other arguments; call `{name}.compute_chunk_sizes()` first"
        )
    if x.ndim == 2:
        other = 1 - axis
        if len(x.chunks[other]) > 1:
            raise ValueError(
                f"`{name}` is chunked along its {_dim_name(other)} dimension ({len(x.chunks[other])} "
                f"chunks); tall Dask arrays must be chunked by rows only: use "
                f"`{name}.rechunk({{{other}: -1}})`"
            )


def from_host(x: Any, rows: Any) -> Any:
    x = np.asarray(x)
    if x.ndim == 2:
        return da.from_array(x, chunks=("auto" if rows is None else rows, -1))
    return da.from_array(x, chunks=-1)


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, rows: Any) -> Any:
    """Gaussian draw with the numbers NumPy gives for the same generator, chunked by ``rows``.

    The generator fills C order sequentially, so drawing the row blocks one after another
    gives exactly ``rng.standard_normal(shape)``, whatever the chunking. Under
    ``distributed`` each block is scattered to the workers as soon as it is drawn, so the
    client never holds more than one block.
    """
    host_dtype = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    if len(shape) != 2 or rows is None or sum(rows) != shape[0]:
        rows = (shape[0],) if shape else ()
    if len(shape) != 2:
        return da.from_array(rng.standard_normal(shape, dtype=host_dtype), chunks=-1)
    client = _client()
    if client is None or len(rows) == 1:
        return da.from_array(rng.standard_normal(shape, dtype=host_dtype), chunks=(rows, -1))
    blocks = []
    for n in rows:
        future = client.scatter(rng.standard_normal((n, shape[1]), dtype=host_dtype))
        blocks.append(da.from_delayed(future, shape=(n, shape[1]), dtype=host_dtype))
    return da.concatenate(blocks, axis=0)
