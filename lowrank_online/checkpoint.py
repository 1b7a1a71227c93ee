"""Save and load state dicts as plain ``.npz`` files (no pickle).

A state dict maps names to arrays of any namespace, Python numbers, strings, booleans,
``None`` or nested dicts of those; nesting is flattened into ``/``-separated keys. Arrays are
copied to the host as they are, so a round trip is bit-exact. ``None`` values and empty dicts
are recorded in a manifest entry (``__save_state__/none``, ``__save_state__/empty``: arrays
of the ``/``-joined keys) and come back as they went in.
"""

from __future__ import annotations

import numbers
import os
import zipfile
import zlib
from typing import Any

import numpy as np

from . import _array

__all__ = ["load_state", "save_state"]

# The manifest's group: refused as a key at the top level of a state, so nothing collides.
_MANIFEST = "__save_state__"


def _flatten(state: dict[str, Any], prefix: str, out: dict[str, np.ndarray], manifest: dict[str, list[str]]) -> None:
    for key, value in state.items():
        if not isinstance(key, str) or "/" in key or not key:
            raise ValueError(f"state keys must be non-empty strings without '/', got {key!r}")
        if not prefix and key == _MANIFEST:
            raise ValueError(f"the state key {_MANIFEST!r} is reserved for save_state's manifest")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if not value:
                manifest["empty"].append(name)
            _flatten(value, name + "/", out, manifest)
        elif value is None:
            manifest["none"].append(name)
        elif _array.is_array(value):
            try:
                host = _array.to_numpy(value)
            except (TypeError, ValueError, RuntimeError) as err:  # e.g. torch.bfloat16
                raise TypeError(f"state entry {name!r}: its dtype {value.dtype} has no NumPy counterpart "
                                "(npz stores NumPy dtypes only); cast it first") from err
            if host.dtype.hasobject:
                raise TypeError(f"state entry {name!r}: object arrays would need pickle")
            out[name] = host
        elif isinstance(value, (numbers.Number, str, np.generic)):
            host = np.asarray(value)
            if host.dtype.hasobject:  # an int beyond 64 bits, a Fraction, a Decimal...
                raise TypeError(f"state entry {name!r}: {type(value).__name__} {value!r} has no fixed-size dtype "
                                "and would need pickle; store it as a string or a float")
            out[name] = host
        else:
            raise TypeError(f"state entry {name!r} has unsupported type {type(value).__name__}")


def save_state(file: str | os.PathLike[str] | Any, state: dict[str, Any]) -> None:
    """Write ``state`` (see module docstring) to ``file`` with :func:`numpy.savez`.

    Raises
    ------
    TypeError
        When ``state`` is not a dict, or a value cannot be stored without pickle (an object
        array, an int beyond 64 bits, a list, a dtype NumPy lacks), naming its key.
    ValueError
        On a key that is not a non-empty string without ``/``, or the reserved key
        ``__save_state__``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"`state` must be a dict, got {type(state).__name__}")
    flat: dict[str, np.ndarray] = {}
    manifest: dict[str, list[str]] = {"none": [], "empty": []}
    _flatten(state, "", flat, manifest)
    for kind, names in manifest.items():
        if names:
            flat[f"{_MANIFEST}/{kind}"] = np.asarray(names, dtype=str)
    np.savez(file, **flat)


def load_state(file: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; arrays come back as NumPy arrays,
    scalars as Python numbers/strings/bools, ``None`` and empty dicts as saved, nesting
    restored. Never unpickles.

    Raises
    ------
    ValueError
        When the file is not a readable ``save_state`` file (corrupt, truncated, not an npz,
        holding pickled data or entries that clash), naming the file.
    OSError
        When the file cannot be opened (``FileNotFoundError``...).
    """
    where = _name_of(file)
    handle = None
    if isinstance(file, (str, os.PathLike)):
        handle = file = open(file, "rb")  # closed here whatever np.load does on a bad file
    try:
        return _read(file, where)
    finally:
        if handle is not None:
            handle.close()


def _name_of(file: Any) -> str:
    if isinstance(file, (str, os.PathLike)):
        return repr(os.fspath(file))
    name = getattr(file, "name", None)
    return repr(name) if isinstance(name, str) else f"<{type(file).__name__}>"


def _read(file: Any, where: str) -> dict[str, Any]:
    # Everything a damaged archive raises on the way: zipfile's and zlib's errors, a short read
    # (EOFError), NumPy's header parser (ValueError), and a member that cannot be found.
    damaged = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError)
    try:
        data = np.load(file, allow_pickle=False)
    except damaged as err:
        raise ValueError(f"{where} is not a readable save_state file (npz): {err}") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{where} holds a single .npy array, not a save_state file (npz)")
    out: dict[str, Any] = {}
    manifest: dict[str, list[str]] = {"none": [], "empty": []}
    with data:
        for name in data.files:
            try:
                value = data[name]
            except damaged as err:
                raise ValueError(f"{where}: entry {name!r} cannot be read (corrupt or truncated file): {err}") from err
            if name.startswith(_MANIFEST + "/") and name[len(_MANIFEST) + 1:] in manifest:
                manifest[name[len(_MANIFEST) + 1:]] = [str(v) for v in np.atleast_1d(value)]
                continue
            _insert(out, name, value.item() if value.ndim == 0 else value, where)
    for name in manifest["empty"]:
        _insert(out, name, {}, where)
    for name in manifest["none"]:
        _insert(out, name, None, where)
    return out


def _insert(out: dict[str, Any], name: str, value: Any, where: str) -> None:
    *parents, leaf = name.split("/")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{where}: entry {name!r} is nested under a value that is not a group")
    if isinstance(value, dict):  # an empty group of the manifest
        if not leaf or not isinstance(node.setdefault(leaf, {}), dict):
            raise ValueError(f"{where}: entry {name!r} clashes with another entry")
        return
    if not leaf or leaf in node:
        raise ValueError(f"{where}: entry {name!r} clashes with another entry")
    node[leaf] = value
