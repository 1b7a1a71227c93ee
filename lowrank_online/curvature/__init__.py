"""Curvature adapter: K-FAC-family preconditioners built on the online core.

:class:`KFACPreconditioner` keeps per-layer Kronecker-factored curvature for fully-connected
layers and preconditions gradients, on any array-API backend. Inside:

* :mod:`.config` -- the frozen, declaratively validated :class:`CurvatureConfig`;
* :mod:`.registry` -- the method table (:data:`METHODS`, :class:`MethodSpec`), the only place a
  method name is interpreted;
* :mod:`.damping` -- the one damping policy every family uses;
* :mod:`.factors` -- one K-factor's exponential average and inverse representation;
* :mod:`.families` -- each family's pure ``init`` / ``update`` / ``precondition`` functions over
  a NamedTuple state;
* :mod:`.preconditioner` -- the thin stateful shell.
"""

from .config import CurvatureConfig
from .factors import Gram
from .preconditioner import KFACPreconditioner, LayerState, kl_clip_scale
from .registry import METHODS, MethodSpec

__all__ = ["METHODS", "CurvatureConfig", "Gram", "KFACPreconditioner", "LayerState", "MethodSpec", "kl_clip_scale"]
