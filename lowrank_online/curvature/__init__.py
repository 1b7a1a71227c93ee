"""Curvature adapter: K-FAC-family preconditioners built on the online core.

:class:`KFACPreconditioner` keeps per-layer Kronecker-factored curvature for fully-connected
layers and preconditions gradients, on any array-API backend.
"""

from .preconditioner import METHODS, KFACPreconditioner, kl_clip_scale

__all__ = ["METHODS", "KFACPreconditioner", "kl_clip_scale"]
