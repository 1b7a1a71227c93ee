"""Save and load state dicts as plain ``.npz`` files (no pickle).

A state dict maps names to arrays of any namespace, Python numbers, strings, booleans or
nested dicts of those; nesting is flattened into ``/``-separated keys. Arrays are copied to
the host as they are, so a round trip is bit-exact.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import numpy as np

from . import _array

__all__ = ["load_state", "save_state"]


def _flatten(state: dict[str, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, value in state.items():
        if not isinstance(key, str) or "/" in key or not key:
            raise ValueError(f"state keys must be non-empty strings without '/', got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, name + "/", out)
        elif value is None:
            continue
        elif _array.is_array(value):
            host = _array.to_numpy(value)
            if host.dtype.hasobject:
                raise TypeError(f"state entry {name!r}: object arrays would need pickle")
            out[name] = host
        elif isinstance(value, (numbers.Number, str, bool, np.generic)):
            out[name] = np.asarray(value)
        else:
            raise TypeError(f"state entry {name!r} has unsupported type {type(value).__name__}")


def save_state(file: str | os.PathLike[str] | Any, state: dict[str, Any]) -> None:
    """Write ``state`` (see module docstring) to ``file`` with :func:`numpy.savez`."""
    flat: dict[str, np.ndarray] = {}
    _flatten(state, "", flat)
    np.savez(file, **flat)


def load_state(file: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; arrays come back as NumPy arrays,
    scalars as Python numbers/strings/bools, nesting restored. Never unpickles."""
    out: dict[str, Any] = {}
    with np.load(file, allow_pickle=False) as data:
        for name in data.files:
            value = data[name]
            node = out
            *parents, leaf = name.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value.item() if value.ndim == 0 else value
    return out
