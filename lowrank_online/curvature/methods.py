"""Per-layer curvature states, one class per method family, and the method registry.

Every layer state exposes ``ready()``, ``update(a, g, k)``, ``precondition(grad, pre)``,
``precondition_factored(G, A, pre)``, ``to_dict()``; the preconditioner owns validation,
schedules and damping.
"""

from __future__ import annotations

from typing import Any

from .. import _array
from . import factors

__all__: list[str] = []


class KFACLayer:
    """K-FAC family (kfac, rkfac, bkfac, brkfac, bkfacc, auto): two independent K-factors."""

    def __init__(self, pre: Any, name: str, index: int, method: str, d_a: int, d_g: int, n: int,
                 xp: Any, device: Any, dtype: Any) -> None:
        self.name, self.index, self.method = name, index, method
        self.d_a, self.d_g, self.n = d_a, d_g, n
        self.xp, self.device, self.dtype = xp, device, dtype
        self.specs = {"A": pre._spec(method, "A", d_a, n, index), "G": pre._spec(method, "G", d_g, n, index)}
        self.state = {"A": factors.empty_state(), "G": factors.empty_state()}

    def ready(self) -> bool:
        return all(s.eigenvalues is not None for s in self.state.values())

    def update(self, a: Any, g: Any, k: int) -> None:
        new_a = factors.update(self.state["A"], a, k, self.specs["A"], self.xp)
        new_g = factors.update(self.state["G"], g, k, self.specs["G"], self.xp)
        self.state = {"A": new_a, "G": new_g}  # both factors or neither

    def precondition(self, grad: Any, pre: Any) -> Any:
        lam_a, lam_g = pre._dampings(self)
        c = pre.continuation
        right = factors.solve(self.state["A"], grad.T, lam_a, c, self.xp).T  # grad A^{-1}
        return factors.solve(self.state["G"], right, lam_g, c, self.xp)  # Gamma^{-1} grad A^{-1}

    def precondition_factored(self, G: Any, A: Any, pre: Any) -> tuple[Any, Any]:
        # Alg. 8: (Gamma^{-1} G^T)(A A^{-1}) -- each factor O(r d N), never d_out x d_in.
        lam_a, lam_g = pre._dampings(self)
        c = pre.continuation
        G_t = factors.solve(self.state["G"], G.T, lam_g, c, self.xp).T
        A_t = factors.solve(self.state["A"], A.T, lam_a, c, self.xp).T
        return G_t, A_t

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "kinds": f"{self.specs['A'].kind},{self.specs['G'].kind}",
                "A": factors.to_dict(self.state["A"]), "G": factors.to_dict(self.state["G"])}

    def load(self, saved: dict[str, Any]) -> None:
        kinds = str(saved.get("kinds", ""))
        if kinds and kinds != f"{self.specs['A'].kind},{self.specs['G'].kind}":
            raise ValueError(f"saved layer {self.name!r} used factor kinds {kinds}, not {self.specs['A'].kind},{self.specs['G'].kind}")
        self.state = {side: factors.from_dict(saved[side], self.xp, self.device) for side in ("A", "G")}


_FAMILIES: dict[str, type] = {m: KFACLayer for m in ("kfac", "rkfac", "bkfac", "brkfac", "bkfacc", "auto")}


def available_methods() -> dict[str, type]:
    """Method name -> layer class (Kronecker-sum, EKFAC and TKFAC methods when available)."""
    methods = dict(_FAMILIES)
    try:
        from .kron_methods import FAMILIES
    except ImportError:
        return methods
    methods.update(FAMILIES)
    return methods


def make_layer(pre: Any, name: str, index: int, method: str, a: Any, g: Any, xp: Any) -> Any:
    cls = available_methods()[method]
    return cls(pre, name, index, method, int(a.shape[1]), int(g.shape[1]), int(a.shape[0]), xp, _array.device(a), a.dtype)


def restore_layer(pre: Any, name: str, saved: dict[str, Any], xp: Any, device: Any) -> Any:
    method = str(saved["method"])
    cls = available_methods()[method]
    dtype = getattr(xp, str(saved["dtype"]))
    layer = cls(pre, name, int(saved["index"]), method, int(saved["d_a"]), int(saved["d_g"]),
                int(saved.get("n", 1)), xp, device, dtype)
    layer.load(saved)
    return layer
