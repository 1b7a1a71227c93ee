"""Checkpoints of the families' NamedTuple states: one flatten and one rebuild for all of them.

A state is a NamedTuple whose fields are arrays, Python numbers, strings, ``None`` or nested
NamedTuples; the field annotations say which (``int``, ``float``, ``str``, a NamedTuple
class, optionally ``| None``; anything else is an array). :func:`to_dict` drops ``None``
fields; :func:`from_dict` rebuilds from the annotations and validates every entry, so a
tampered or truncated checkpoint is refused with a ``ValueError`` naming the key.
"""

from __future__ import annotations

import numbers
import types
import typing
from typing import Any

import numpy as np

from .. import _array

__all__: list[str] = []


def _is_state(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def to_dict(state: Any) -> dict[str, Any]:
    """Nested dict of the non-``None`` fields of ``state`` (arrays stay in their namespace)."""
    out: dict[str, Any] = {}
    for name in state._fields:
        value = getattr(state, name)
        if value is None:
            continue
        out[name] = to_dict(value) if _is_state(value) else value
    return out


def map_arrays(state: Any, fn: Any) -> Any:
    """``state`` with ``fn`` applied to every array (nested states included)."""
    values = []
    for value in state:
        if _is_state(value):
            value = map_arrays(value, fn)
        elif _array.is_array(value):
            value = fn(value)
        values.append(value)
    return type(state)(*values)


def all_finite(state: Any, xp: Any) -> bool:
    """Whether every array of ``state`` (nested states included) is finite."""
    arrays = []

    def visit(s: Any) -> None:
        for value in s:
            if _is_state(value):
                visit(value)
            elif _array.is_array(value) and value.ndim and value.shape[0]:
                arrays.append(value)

    visit(state)
    return _array.all_finite(xp, *arrays)


def _parts(hint: Any) -> tuple[Any, bool]:
    """The non-None type of an annotation and whether ``None`` is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(hint))
    return hint, hint is Any


def from_dict(cls: type, saved: Any, *, xp: Any, device: Any, dtype: Any, where: str, copy: bool = True) -> Any:
    """Rebuild a ``cls`` from :func:`to_dict`'s output (possibly loaded from npz).

    Arrays are moved to ``xp`` on ``device`` and must be finite floating arrays of ``dtype``;
    integers must be non-negative. ``where`` prefixes the keys named in errors. ``copy=False``
    keeps arrays that are already in ``xp`` on ``device`` as they are (checked there, with no
    round trip through the host: a state received from another process every step).
    """
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint entry {where!r} must be a group of entries, got {type(saved).__name__}")
    unknown = set(saved) - set(cls._fields)
    if unknown:
        raise ValueError(f"checkpoint entry {where!r} has unknown keys {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in cls._fields:
        key = f"{where}/{name}"
        kind, optional = _parts(hints[name])
        if name not in saved:
            if not optional:
                raise ValueError(f"checkpoint entry {key!r} is missing")
            values[name] = None
            continue
        value = saved[name]
        if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
            values[name] = from_dict(kind, value, xp=xp, device=device, dtype=dtype, where=key, copy=copy)
        elif kind is int:
            values[name] = _integer(value, key)
        elif kind is float:
            values[name] = _real(value, key)
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError(f"checkpoint entry {key!r} must be a string, got {value!r}")
            values[name] = value
        else:
            values[name] = _array_entry(value, key, xp, device, dtype, copy)
    return cls(**values)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"checkpoint entry {key!r} must be a non-negative integer, got {value!r}")
    return int(value)


def _real(value: Any, key: str) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"checkpoint entry {key!r} must be a finite real number, got {value!r}")
    return float(value)


def _array_entry(value: Any, key: str, xp: Any, device: Any, dtype: Any, copy: bool = True) -> Any:
    if not _array.is_array(value):
        raise ValueError(f"checkpoint entry {key!r} must be an array, got {type(value).__name__}")
    if not copy and _array.namespace((key, value)) is xp and _array.device(value) == device:
        if value.dtype != dtype:
            raise ValueError(f"checkpoint entry {key!r} has dtype {_array.dtype_name(value.dtype)}, "
                             f"expected {_array.dtype_name(dtype)}")
        if not _array.all_finite(xp, value):
            raise ValueError(f"checkpoint entry {key!r} contains NaN or infinity")
        return value
    host = _array.to_numpy(value)
    if host.dtype != np.dtype(_array.dtype_name(dtype)):
        raise ValueError(f"checkpoint entry {key!r} has dtype {host.dtype}, expected {_array.dtype_name(dtype)}")
    if host.size and not np.all(np.isfinite(host)):
        raise ValueError(f"checkpoint entry {key!r} contains NaN or infinity")
    return _array.from_host(host, xp, device)


# --------------------------------------------------------------------------------------------
# consistency checks of restored states (each family's ``check`` calls these)
# --------------------------------------------------------------------------------------------
def _host(x: Any) -> np.ndarray:
    return np.asarray(_array.to_numpy(x))


def check_square(M: Any, d: int, key: str) -> None:
    if M is not None and tuple(M.shape) != (d, d):
        raise ValueError(f"checkpoint entry {key!r} must have shape {(d, d)}, got {tuple(M.shape)}")


def check_spectrum(values: Any, key: str, *, sorted_: bool = True) -> None:
    """Non-negative (to rounding) and, when ``sorted_``, descending."""
    v = _host(values)
    if v.ndim != 1:
        raise ValueError(f"checkpoint entry {key!r} must be 1-D, got shape {v.shape}")
    if v.size and v.min() < -1e3 * np.finfo(v.dtype).eps * max(abs(v).max(), np.finfo(v.dtype).tiny):
        raise ValueError(f"checkpoint entry {key!r} must be non-negative (a PSD spectrum), got minimum {v.min():.3g}")
    if sorted_ and v.size > 1 and np.any(np.diff(v) > 0):
        raise ValueError(f"checkpoint entry {key!r} must be sorted in descending order")


def check_eigh(values: Any, vectors: Any, d: int, key: str,
               names: tuple[str, str] = ("eigenvalues", "eigenvectors")) -> None:
    """A held eigendecomposition: both or neither, ``vectors`` d x m, ``values`` (m,) sorted."""
    if (values is None) != (vectors is None):
        raise ValueError(f"checkpoint entries {key}/{names[0]!s} and {key}/{names[1]!s} must be given together")
    if values is None:
        return
    check_spectrum(values, f"{key}/{names[0]}")
    if vectors.ndim != 2 or vectors.shape[0] != d or vectors.shape[1] != values.shape[0]:
        raise ValueError(f"checkpoint entry '{key}/{names[1]}' must have shape ({d}, {values.shape[0]}), "
                         f"got {tuple(vectors.shape)}")
