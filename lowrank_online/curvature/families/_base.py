"""The protocol every method family implements: its layer's description and its functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Family", "LayerShape"]


class LayerShape(NamedTuple):
    """What a family knows of its layer: its position (for seeds), widths and namespace."""

    index: int
    d_a: int  # input side, bias column included
    d_g: int  # output side
    xp: Any
    device: Any


class Family(NamedTuple):
    """The pure functions of one layer's curvature.

    ``init(a, g, step) -> state``
        the state after the first statistics batch;
    ``update(state, a, g, step) -> state``
        one more statistics batch (the exponential averages and, when due, the inverse);
    ``prepare(state, damping, step) -> state``
        make the solve current for the damping value (the Kronecker-sum solver depends on
        it; the identity elsewhere), so that ``precondition`` only applies;
    ``dampings(state, damping, step) -> tuple``
        the damping of each factor under the configured mode (:mod:`..damping`);
    ``precondition(state, grad, damping, step, overwrite=False) -> step``
        ``F^{-1} grad`` in the weight's ``d_out x d_in`` layout; ``overwrite=True``: the
        caller owns ``grad``, which may hold the step (the two-sided solves then allocate no
        ``d_out x d_in`` temporary);
    ``precondition_factored(state, G, A, damping, step) -> (G~, A~)``
        ``step = G~^T A~`` for ``grad = G^T A`` (paper 001, Alg. 8 where the family has two
        factors; ``(I, step)`` otherwise);
    ``describe(state, step) -> dict``
        kinds, held and applied ranks and eigenvalues, for :meth:`layer_state`;
    ``check(state, where)``
        raise ``ValueError`` naming the entry when a restored state is inconsistent (shapes,
        sorted non-negative spectra, counters);
    ``state_type``
        the state's NamedTuple class (checkpoints rebuild it).

    The last five split an update between processes (one computes a decomposition, every
    process commits it; :meth:`KFACPreconditioner.decompose`). A family that leaves them at
    their defaults has one part, ``"state"``: its whole update is computed in one place and its
    whole state travels.

    ``parts``
        names of the independently computed decompositions of a layer;
    ``due(state, step) -> tuple``
        the parts whose decomposition an update at ``step`` recomputes;
    ``extract(state, part) -> payload`` / ``install(state, part, payload) -> state``
        a part's decomposition out of a state, and into one whose update deferred it
        (``init`` / ``update`` take ``compute=``: the parts computed, default all);
    ``part_types``
        each part's payload NamedTuple class (a received payload is rebuilt from it);
    ``check_part(part, payload, where)``
        ``ValueError`` naming the entry when a received payload does not fit the layer;
    ``precondition_blocks(state, blocks, damping, step, check_finite=None) -> blocks``
        ``precondition`` in place on the gradient given as column blocks (``[W b]`` as ``W``
        and ``b``), where the family's solves allow it (the K-FAC family); None elsewhere.
        ``check_finite``: the name under which non-finite blocks are refused (``ValueError``
        before any is written).
    ``moments(state, a, g, payload) -> array``
        EKFAC: the sums over the rows ``(a, g)`` that its scalings need, in the basis of
        ``payload`` (an installed decomposition) or of ``state``; ``init`` / ``update`` /
        ``install`` then take ``moments=`` (with :class:`Gram` statistics) in place of the rows.
        None elsewhere.
    """

    init: Callable[..., Any]
    update: Callable[..., Any]
    prepare: Callable[..., Any]
    dampings: Callable[..., tuple[float, ...]]
    precondition: Callable[..., Any]
    precondition_factored: Callable[..., tuple[Any, Any]]
    describe: Callable[..., dict[str, Any]]
    check: Callable[..., None]
    state_type: type
    parts: tuple[str, ...] = ("state",)
    due: Callable[..., tuple[str, ...]] | None = None
    extract: Callable[..., Any] | None = None
    install: Callable[..., Any] | None = None
    part_types: dict[str, type] | None = None
    check_part: Callable[..., None] | None = None
    precondition_blocks: Callable[..., list[Any]] | None = None
    moments: Callable[..., Any] | None = None
