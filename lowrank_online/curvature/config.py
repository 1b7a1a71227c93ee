"""The preconditioner's configuration: one frozen object, validated once, handed to the layers.

Every option of :class:`~lowrank_online.curvature.KFACPreconditioner` lives in
:class:`CurvatureConfig`; its constraints are one declarative table (:data:`_CONSTRAINTS`),
checked when the object is built. Layers and method families read the configuration and never
the preconditioner.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from . import registry
from ._params import Boolean, Interval, NoneValue, Options, Schedule, scheduled, validate
from .damping import MODES
from .registry import MethodSpec

__all__ = ["CurvatureConfig"]

_POSITIVE_INT = Interval(numbers.Integral, 1, None)
_NONNEGATIVE_INT = Interval(numbers.Integral, 0, None)
_POSITIVE_REAL = Interval(numbers.Real, 0.0, None, closed="neither")

_CONSTRAINTS: dict[str, list[Any]] = {
    "decay": [Interval(numbers.Real, 0.0, 1.0, closed="right")],
    "damping": [_POSITIVE_REAL, Schedule()],
    "damping_mode": [Options(MODES)],
    "min_damping": [_POSITIVE_REAL],
    "gradient_damping": [Interval(numbers.Real, 0.0, None)],
    "damping_adaptation": [NoneValue(), Options(("lm",))],
    "continuation": [Boolean()],
    "rank": [_POSITIVE_INT, Schedule()],
    "held_rank": [NoneValue(), _POSITIVE_INT, Schedule()],
    "oversample": [_NONNEGATIVE_INT, Schedule()],
    "n_iter": [_NONNEGATIVE_INT],
    "T_updt": [_POSITIVE_INT],
    "T_inv": [_POSITIVE_INT],
    "T_brand": [_POSITIVE_INT],
    "T_rsvd": [_POSITIVE_INT],
    "T_corct": [_POSITIVE_INT],
    "phi_crc": [Interval(numbers.Real, 0.0, 1.0, closed="right")],
    "bkfac_init": [Options(("exact", "reigh"))],
    "kl_clip": [NoneValue(), _POSITIVE_REAL],
    "kron_tol": [_POSITIVE_REAL],
    "kron_max_iter": [_POSITIVE_INT],
    "inv_dtype": [NoneValue(), Options(("float32", "float64"))],
    "max_failures": [_POSITIVE_INT],
    "seed": [_NONNEGATIVE_INT],
}


@dataclass(frozen=True)
class CurvatureConfig:
    """Options of a K-FAC-family preconditioner (see :class:`KFACPreconditioner` for each).

    Frozen: a configuration is built and validated once. ``rank``, ``held_rank``,
    ``oversample`` and ``damping`` may be callables of the step (schedules); their values are
    checked when used (``rank_at``, ``damping_at``...), with an error naming the step.
    """

    method: str = "kfac"
    layer_methods: Mapping[str, str] = field(default_factory=dict)
    decay: float = 0.95
    damping: float | Callable[[int], float] = 0.1
    damping_mode: str = "relative"
    min_damping: float = 1e-8
    gradient_damping: float = 0.0
    damping_adaptation: str | None = None
    continuation: bool = True
    rank: int | Callable[[int], int] = 64
    held_rank: int | Callable[[int], int] | None = None
    oversample: int | Callable[[int], int] = 10
    n_iter: int = 4
    T_updt: int = 1
    T_inv: int = 10
    T_brand: int = 1
    T_rsvd: int = 10
    T_corct: int = 10
    phi_crc: float = 0.5
    bkfac_init: str = "exact"
    kl_clip: float | None = None
    kron_tol: float = 1e-3
    kron_max_iter: int = 100
    inv_dtype: str | None = None
    max_failures: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        registry.lookup(self.method, "method")
        if not isinstance(self.layer_methods, Mapping):
            raise TypeError("`layer_methods` must be a dict {layer name: method}, got "
                            f"{type(self.layer_methods).__name__}")
        for key, value in self.layer_methods.items():
            if not isinstance(key, str):
                raise TypeError(f"`layer_methods` keys must be layer names (str), got {key!r}")
            registry.lookup(value, f"layer_methods[{key!r}]")
        object.__setattr__(self, "layer_methods", MappingProxyType(dict(self.layer_methods)))
        validate({f.name: getattr(self, f.name) for f in fields(self)}, _CONSTRAINTS)

    # ------------------------------------------------------------ per-layer and per-step values
    def method_of(self, layer: str) -> str:
        """The method name of ``layer`` (its override, else the default)."""
        return self.layer_methods.get(layer, self.method)

    def spec_of(self, layer: str) -> MethodSpec:
        return registry.lookup(self.method_of(layer))

    def rank_at(self, step: int) -> int:
        """The rank applied to the gradient at ``step``."""
        return scheduled(self.rank, step, "rank", _POSITIVE_INT)

    def held_rank_at(self, step: int) -> int:
        """B-updates: the rank kept through the truncation before each update (Alg. 4 l. 3-4)."""
        if self.held_rank is None:
            return self.rank_at(step)
        return scheduled(self.held_rank, step, "held_rank", _POSITIVE_INT)

    def oversample_at(self, step: int) -> int:
        return scheduled(self.oversample, step, "oversample", _NONNEGATIVE_INT)

    def damping_at(self, step: int) -> float:
        return scheduled(self.damping, step, "damping", _POSITIVE_REAL)

    def period(self, name: str) -> int:
        """A period of the schedule by its field name (``"T_inv"``, ``"T_brand"``...)."""
        return int(getattr(self, name))
