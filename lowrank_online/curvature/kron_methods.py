"""Curvature methods built on the Kronecker toolkit: EKFAC, TKFAC and the Kronecker-sum family.

* ``ekfac`` / ``ekfac-ra`` (paper 004): the Kronecker-factored eigenbasis of the EA K-factors,
  recomputed every ``T_inv``, with the diagonal rescaling ``s*`` kept as a running average of
  per-sample second moments (``ekfac``) or of the mini-batch gradient squared (``ekfac-ra``).
  It restarts from the current batch whenever the basis changes.
* ``tkfac`` (paper 003): EA of ``delta``, ``Phi``, ``Psi`` (eq. (4.9)). The factors
  ``sqrt(delta) Psi`` and ``sqrt(delta) Phi`` are treated like K-FAC's, which is eq. (5.15)'s
  damping in the relative mode.
* ``kpsvd`` (paper 002, Sec. 3.1): the nearest Kronecker product of each batch's Fisher block,
  computed matrix-free and warm-started from the previous one, EA'd factor by factor as in
  Sec. 2.2. Its two factors are PSD (Prop. 3.2) and are treated like K-FAC's.
* ``deflation`` / ``lanczos`` / ``kfac-corrected`` (Sec. 3.2-3.3): two-term Kronecker sums, EA'd
  term by term (each new term sign-aligned with the average, since ``(-L) ⊗ (-R) = L ⊗ R``), and
  solved with :class:`~lowrank_online.KronSumInverse` (Sec. 3.4), set up every ``T_inv``.

Layers of the two-factor kinds (tkfac, kpsvd) support the linear-time factored application;
the others precondition the full gradient and return ``(I, step)`` from
``precondition_factored``.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .. import _array, _linalg
from ..kronecker import KronSum, KronSumInverse, ekfac_solve, ekfac_update, kfac_corrected, kpsvd, tkfac_factors
from ..solve import _damped_solve
from . import factors

__all__ = ["FAMILIES"]


@contextmanager
def _inner_solve() -> Iterator[None]:
    """The per-batch solves are warm-started and capped at ``kron_max_iter``; stopping there is
    expected (the factors are averaged across batches), so their non-convergence warning is
    not passed on. Every other warning is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*did not converge.*", category=RuntimeWarning)
        yield


def _ea(old: Any, new: Any, decay: float) -> Any:
    return new if old is None else decay * old + (1.0 - decay) * new


def _eigh(M: Any, xp: Any) -> tuple[Any, Any]:
    w, V = _linalg.small_eigh((M + M.T) / 2, xp)
    return xp.clip(w, min=0.0), V


class _Base:
    """Bookkeeping shared by the Kronecker-based layers."""

    def __init__(self, pre: Any, name: str, index: int, method: str, d_a: int, d_g: int, n: int,
                 xp: Any, device: Any, dtype: Any) -> None:
        self.name, self.index, self.method = name, index, method
        self.d_a, self.d_g, self.n = d_a, d_g, n
        self.xp, self.device, self.dtype = xp, device, dtype
        self.decay, self.T_inv, self.seed = pre.decay, pre.T_inv, (pre.seed, index)
        self.tol, self.max_iter = pre.kron_tol, pre.kron_max_iter
        self.arrays: dict[str, Any] = {}
        self.counters = {"n_stats": 0}

    def _due(self, k: int) -> bool:
        return self.counters["n_stats"] == 0 or k % self.T_inv == 0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, **self.counters, "arrays": dict(self.arrays)}

    def load(self, saved: dict[str, Any]) -> None:
        for key in self.counters:
            self.counters[key] = int(saved[key])
        self.arrays = {k: self.xp.asarray(v, device=self.device) for k, v in dict(saved.get("arrays", {})).items()}

    def _full_step_as_factors(self, G: Any, A: Any, pre: Any) -> tuple[Any, Any]:
        step = self.precondition(G.T @ A, pre)
        eye = self.xp.eye(self.d_g, dtype=step.dtype, device=self.device)
        return eye, step


class TwoFactorLayer(_Base):
    """tkfac and kpsvd: an EA'd pair of PSD factors (left: d_g side, right: d_a side)."""

    def ready(self) -> bool:
        return "QL" in self.arrays

    def update(self, a: Any, g: Any, k: int) -> None:
        xp, arrays = self.xp, dict(self.arrays)
        if self.method == "tkfac":
            t = tkfac_factors(a, g, check_finite=False)
            arrays["delta"] = _ea(arrays.get("delta"), xp.reshape(t.delta, (1,)), self.decay)
            arrays["Psi"] = _ea(arrays.get("Psi"), t.Psi, self.decay)
            arrays["Phi"] = _ea(arrays.get("Phi"), t.Phi, self.decay)
            root = xp.sqrt(arrays["delta"][0])
            left, right = root * arrays["Psi"], root * arrays["Phi"]
        else:
            init = KronSum((arrays["L"],), (arrays["R"],)) if "L" in arrays else None
            with _inner_solve():
                ks = kpsvd(a, g, terms=1, method="power", init=init, seed=np.random.default_rng([*self.seed, k]),
                           tol=self.tol, max_iter=self.max_iter, check_finite=False)
            arrays["L"] = _ea(arrays.get("L"), ks.left[0], self.decay)
            arrays["R"] = _ea(arrays.get("R"), ks.right[0], self.decay)
            left, right = arrays["L"], arrays["R"]
        if self._due(k):
            arrays["LL"], arrays["QL"] = _eigh(left, xp)
            arrays["LR"], arrays["QR"] = _eigh(right, xp)
        self.arrays = arrays
        self.counters["n_stats"] += 1

    def _dampings(self, pre: Any) -> tuple[float, float]:
        """(lambda_right, lambda_left) with the preconditioner's damping mode, as for K-FAC."""
        value = float(pre.damping(pre.steps))
        LR, LL = self.arrays["LR"], self.arrays["LL"]
        if pre.damping_mode == "relative":
            lam = (value * float(LR[0]), value * float(LL[0]))
        elif pre.damping_mode == "absolute":
            lam = (value, value)
        else:
            ta, tg = float(self.xp.sum(LR)) / self.d_a, float(self.xp.sum(LL)) / self.d_g
            pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            lam = (pi * math.sqrt(value), math.sqrt(value) / pi)
        return max(lam[0], pre.min_damping), max(lam[1], pre.min_damping)

    def precondition(self, grad: Any, pre: Any) -> Any:
        lam_r, lam_l = self._dampings(pre)
        a = self.arrays
        right = _damped_solve(a["LR"], a["QR"], grad.T, lam_r, False, self.xp).T
        return _damped_solve(a["LL"], a["QL"], right, lam_l, False, self.xp)

    def precondition_factored(self, G: Any, A: Any, pre: Any) -> tuple[Any, Any]:
        lam_r, lam_l = self._dampings(pre)
        a = self.arrays
        G_t = _damped_solve(a["LL"], a["QL"], G.T, lam_l, False, self.xp).T
        A_t = _damped_solve(a["LR"], a["QR"], A.T, lam_r, False, self.xp).T
        return G_t, A_t


class KronSumLayer(_Base):
    """deflation, lanczos, kfac-corrected: an EA'd two-term sum solved with KronSumInverse."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.counters = {"n_stats": 0, "n_inv": 0}
        self._solver: Any = None
        self._solver_key: Any = None

    def ready(self) -> bool:
        return "inv_L0" in self.arrays

    def _batch_sum(self, a: Any, g: Any, k: int) -> KronSum:
        rng = np.random.default_rng([*self.seed, k])
        if self.method == "kfac-corrected":
            return kfac_corrected(a, g, seed=rng, tol=self.tol, max_iter=self.max_iter, check_finite=False)
        arrays = self.arrays
        init = KronSum((arrays["L0"], arrays["L1"]), (arrays["R0"], arrays["R1"])) if "L0" in arrays else None
        return kpsvd(a, g, terms=2, method=self.method, init=init, seed=rng, tol=self.tol, max_iter=self.max_iter,
                     check_finite=False)

    def update(self, a: Any, g: Any, k: int) -> None:
        xp, arrays = self.xp, dict(self.arrays)
        with _inner_solve():
            ks = self._batch_sum(a, g, k)
        for i in range(2):
            L, R = ks.left[i], ks.right[i]
            if f"L{i}" in arrays and float(xp.sum(L * arrays[f"L{i}"])) < 0.0:
                L, R = -L, -R  # the same product, aligned with the running average
            arrays[f"L{i}"] = _ea(arrays.get(f"L{i}"), L, self.decay)
            arrays[f"R{i}"] = _ea(arrays.get(f"R{i}"), R, self.decay)
        counters = dict(self.counters)
        if self._due(k):  # the sum the inverse uses until the next T_inv
            for key in ("L0", "R0", "L1", "R1"):
                arrays[f"inv_{key}"] = arrays[key]
            counters["n_inv"] += 1
        counters["n_stats"] += 1
        self.arrays, self.counters = arrays, counters

    def _inverse(self, pre: Any) -> Any:
        """``KronSumInverse`` of the damped sum: relative mode puts ``phi lambda_max`` on each
        factor of the first term (the K-FAC treatment); pi / absolute modes as for K-FAC."""
        value = float(pre.damping(pre.steps))
        key = (self.counters["n_inv"], pre.damping_mode, value)
        if self._solver is not None and key == self._solver_key:
            return self._solver
        a = self.arrays
        if pre.damping_mode == "relative":
            ml = float(_linalg.small_eigh(a["inv_L0"], self.xp)[0][0])
            mr = float(_linalg.small_eigh(a["inv_R0"], self.xp)[0][0])
            lam, pi = (value * value * ml * mr, math.sqrt(ml / mr)) if ml > 0 and mr > 0 else (value, 1.0)
        elif pre.damping_mode == "absolute":
            lam, pi = value * value, 1.0
        else:
            lam, pi = value, None
        self._solver = KronSumInverse(a["inv_L0"], a["inv_R0"], a["inv_L1"], a["inv_R1"],
                                      damping=max(lam, pre.min_damping), pi=pi, check_finite=False)
        self._solver_key = key
        return self._solver

    def precondition(self, grad: Any, pre: Any) -> Any:
        return self._inverse(pre).apply(grad)

    precondition_factored = _Base._full_step_as_factors

    def load(self, saved: dict[str, Any]) -> None:
        super().load(saved)
        self._solver = None


class EKFACLayer(_Base):
    """ekfac / ekfac-ra: eigenbasis of the EA K-factors plus EA'd diagonal scalings."""

    def __init__(self, pre: Any, name: str, index: int, method: str, d_a: int, d_g: int, n: int,
                 xp: Any, device: Any, dtype: Any) -> None:
        super().__init__(pre, name, index, method, d_a, d_g, n, xp, device, dtype)
        spec = factors.FactorSpec("eigh", pre.decay, pre.rank, pre.oversample, pre.n_iter, pre.T_inv, 1, None,
                                  None, 0.5, "exact", (pre.seed, index, 0))
        self.specs = {"A": spec, "G": spec._replace(seed=(pre.seed, index, 1))}
        self.state = {"A": factors.empty_state(), "G": factors.empty_state()}

    def ready(self) -> bool:
        return "S" in self.arrays

    def update(self, a: Any, g: Any, k: int) -> None:
        new_a = factors.update(self.state["A"], a, k, self.specs["A"], self.xp)
        new_g = factors.update(self.state["G"], g, k, self.specs["G"], self.xp)
        rebased = self._due(k)
        S = None if rebased else self.arrays.get("S")
        S = ekfac_update(S, a, g, new_g.eigenvectors, new_a.eigenvectors, decay=self.decay,
                         per_sample=self.method == "ekfac", check_finite=False)
        self.state = {"A": new_a, "G": new_g}
        self.arrays = {"S": S}
        self.counters["n_stats"] += 1

    def _damping(self, pre: Any) -> float:
        value = float(pre.damping(pre.steps))
        if pre.damping_mode == "relative":
            value *= float(self.xp.max(self.arrays["S"]))
        return max(value, pre.min_damping)

    def precondition(self, grad: Any, pre: Any) -> Any:
        return ekfac_solve(grad, self.arrays["S"], self.state["G"].eigenvectors, self.state["A"].eigenvectors,
                           damping=self._damping(pre), check_finite=False)

    precondition_factored = _Base._full_step_as_factors

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "A": factors.to_dict(self.state["A"]), "G": factors.to_dict(self.state["G"])}

    def load(self, saved: dict[str, Any]) -> None:
        super().load(saved)
        self.state = {side: factors.from_dict(saved[side], self.xp, self.device) for side in ("A", "G")}


FAMILIES: dict[str, type] = {
    "ekfac": EKFACLayer,
    "ekfac-ra": EKFACLayer,
    "tkfac": TwoFactorLayer,
    "kpsvd": TwoFactorLayer,
    "deflation": KronSumLayer,
    "lanczos": KronSumLayer,
    "kfac-corrected": KronSumLayer,
}
