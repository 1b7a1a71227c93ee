"""Curvature method families: pure functions over NamedTuple states (optax's init/update split).

:func:`build` returns a :class:`Family` for one layer: closures over the configuration, the
method's registry entry and the layer's shape, and nothing else (no preconditioner). Every
state is a NamedTuple of arrays, numbers and nested NamedTuples, so one pair of functions
(:mod:`.._state`) checkpoints them all.
"""

from __future__ import annotations

from ..config import CurvatureConfig
from ..registry import MethodSpec
from . import ekfac, kfac, kronsum, pair
from ._base import Family, LayerShape

__all__ = ["Family", "LayerShape", "build"]

_BUILDERS = {"kfac": kfac.build, "ekfac": ekfac.build, "pair": pair.build, "kronsum": kronsum.build}


def build(config: CurvatureConfig, method: MethodSpec, shape: LayerShape) -> Family:
    """The functions of one layer of ``method``'s family, closed over ``config`` and ``shape``."""
    return _BUILDERS[method.family](config, method, shape)
