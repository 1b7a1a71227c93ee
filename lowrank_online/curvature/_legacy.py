"""Conversion of checkpoints written by lowrank_online 0.1.0 (format 1) to format 2.

Format 1 had no ``format`` key; each layer stored its family's arrays under ad-hoc keys
(``arrays/QL``, ``inv_L0``, a ``kinds`` string...). Format 2 stores each layer's NamedTuple
state under ``state`` (see :mod:`._state`). Every format-1 layer of every method maps onto
format 2 without loss; the converted state is then validated like any other.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .. import _array
from . import registry

__all__: list[str] = []


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` in format 2 (a new dict; the input is not modified)."""
    version = state.get("format", 1)
    if version == 2:
        return state
    if version != 1:
        raise ValueError(f"checkpoint format {version!r} is not supported by this release (it reads formats 1 and 2)")
    layers = state.get("layers", {})
    if not isinstance(layers, dict):
        raise ValueError("checkpoint entry 'layers' must be a group of entries")
    out = {k: v for k, v in state.items() if k != "layers"}
    out["format"] = 2
    out["layers"] = {name: _layer(name, saved) for name, saved in layers.items()}
    return out


def _dtype(value: Any) -> str:
    # Format 1 wrote str(dtype).split(".")[-1], which for NumPy's scalar classes gave "float64'>".
    found = re.search(r"float(32|64)", str(value))
    return found.group(0) if found else str(value)


def _layer(name: str, saved: Any) -> dict[str, Any]:
    where = f"layers/{name}"
    if not isinstance(saved, dict) or "method" not in saved:
        raise ValueError(f"format-1 checkpoint entry {where!r} lacks its method")
    family = registry.lookup(str(saved["method"]), f"{where}/method").family
    try:
        state = _CONVERTERS[family](saved)
    except KeyError as err:
        raise ValueError(f"format-1 checkpoint entry {where!r} lacks {err.args[0]!r}") from None
    head = {k: saved[k] for k in ("method", "index", "d_a", "d_g", "namespace") if k in saved}
    return {**head, "dtype": _dtype(saved.get("dtype", "")), "state": state}


def _factor(saved: dict[str, Any], kind: str) -> dict[str, Any]:
    keep = {k: saved[k] for k in ("dense", "eigenvalues", "eigenvectors") if k in saved}
    return {"kind": kind, **keep, "n_stats": saved["n_stats"], "n_brand": saved["n_brand"]}


def _kfac(saved: dict[str, Any]) -> dict[str, Any]:
    kind_a, kind_g = str(saved["kinds"]).split(",")
    return {"A": _factor(saved["A"], kind_a), "G": _factor(saved["G"], kind_g)}


def _ekfac(saved: dict[str, Any]) -> dict[str, Any]:
    return {"A": _factor(saved["A"], "eigh"), "G": _factor(saved["G"], "eigh"), "scalings": saved["arrays"]["S"]}


def _pair(saved: dict[str, Any]) -> dict[str, Any]:
    arrays = saved["arrays"]
    tkfac = "delta" in arrays
    out = {"left": arrays["Psi" if tkfac else "L"], "right": arrays["Phi" if tkfac else "R"],
           "left_values": arrays["LL"], "left_vectors": arrays["QL"], "right_values": arrays["LR"],
           "right_vectors": arrays["QR"], "n_stats": saved["n_stats"]}
    if tkfac:
        out["delta"] = arrays["delta"]
    return out


def _kronsum(saved: dict[str, Any]) -> dict[str, Any]:
    arrays = saved["arrays"]
    keys = ("L0", "R0", "L1", "R1")
    frozen = {k: arrays[f"inv_{k}"] for k in keys}
    spectra = []  # format 2 keeps the frozen first term's spectra; 0.1.0 recomputed them per solve
    for key in ("R0", "L0"):
        M = np.asarray(_array.to_numpy(frozen[key]))
        w = np.linalg.eigvalsh((M + M.T) / 2)
        spectra += [w[-1], w.sum()]
    return {"average": {k: arrays[k] for k in keys}, "frozen": frozen, "spectra": np.asarray(spectra, dtype=M.dtype),
            "n_stats": saved["n_stats"], "n_inv": saved["n_inv"]}


_CONVERTERS = {"kfac": _kfac, "ekfac": _ekfac, "pair": _pair, "kronsum": _kronsum}
