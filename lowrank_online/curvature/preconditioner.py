"""K-FAC-family preconditioners for fully-connected layers, usable from any training loop.

Paper 001 (Puiu): k-fac, r-kfac (Alg. 1), b-kfac (Alg. 4), b-r-kfac (Alg. 5), b-kfac-c (Alg. 7),
the mixture of Sec. 3.5, spectrum continuation, damping ``lambda = phi lambda_max`` (Sec. 6) and
the linear-time inverse application of Alg. 8. Papers 002-004 add the Kronecker-sum methods,
TKFAC and EKFAC (see :mod:`lowrank_online.curvature.registry`).

Conventions: a layer's weight, bias included, is the ``d_out x d_in`` matrix ``[W b]``. The
caller appends a column of ones to the activations ``a`` (``N x d_in``) when the layer has a
bias. ``g`` (``N x d_out``) are the per-sample pre-activation gradients. The gradient is
``grad = (1/N) g^T a`` and the K-factors are ``A = E[a a^T]`` (``d_in x d_in``) and
``Gamma = E[g g^T]`` (``d_out x d_out``). The K-FAC step is ``Gamma^{-1} grad A^{-1}``.

The class is a thin shell: the configuration is one frozen :class:`CurvatureConfig`, each
layer is a family of pure functions (:mod:`.families`) over a NamedTuple state, and the shell
validates input, calls the functions and swaps in a new state only when they returned.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat

from .. import _array, _linalg, _validate
from . import _legacy, _state, registry
from .config import CurvatureConfig
from .damping import Damping
from .factors import Gram, map_statistics
from .families import Family, LayerShape, build

__all__ = ["KFACPreconditioner", "LayerState", "kl_clip_scale"]

#: Format of :meth:`KFACPreconditioner.state_dict`. Format 1 (lowrank_online 0.1.0, no
#: ``format`` key) is converted on load.
STATE_FORMAT = 2

# Levenberg-Marquardt adaptation (Martens & Grosse 2015, Sec. 6.5): the damping is multiplied
# by OMEGA when the step did better than 3/4 of what the quadratic model predicted, and divided
# by it when it did worse than 1/4. The scale stays within [1, LM_RANGE]: the configured damping
# is a floor that LM adds to and gives back. Letting it fall below 1 (as M&G, who start from a
# large damping) let long runs of good steps shrink it 100-fold and the next bad step spike
# (evidence/stability.py; docs: curvature, "Stability").
LM_OMEGA = 19.0 / 20.0
LM_RANGE = 1e4


def kl_clip_scale(steps: list[Any], grads: list[Any], lr: float, kappa: float, xp: Any) -> float:
    """KL-clipping factor ``min(1, sqrt(kappa / (lr^2 sum_l <step_l, grad_l>)))``.

    Martens & Grosse (2015) / Ba et al. (2017), the version of paper 002, App. E: the
    preconditioned step is rescaled so that the quadratic model's predicted KL change stays
    below ``kappa``. ``lr`` and ``kappa`` must be positive and finite; ``steps`` and ``grads``
    pair up layer by layer. A non-finite or non-positive ``sum <step, grad>`` (no descent
    direction to bound) leaves the steps unscaled.
    """
    lr = _validate.check_real(lr, "lr", low=0.0, low_open=True)
    kappa = _validate.check_real(kappa, "kappa", low=0.0, low_open=True)
    if len(steps) != len(grads):
        raise ValueError(f"`steps` has {len(steps)} entries but `grads` has {len(grads)}; pass one per layer")
    total = sum(float(xp.sum(s * g)) for s, g in zip(steps, grads, strict=True))
    if not total > 0.0 or not math.isfinite(total):
        return 1.0
    return min(1.0, math.sqrt(kappa / (lr * lr * total)))


class LayerState(NamedTuple):
    """What :meth:`KFACPreconditioner.layer_state` reports of one layer.

    ``kinds`` maps each factor (``"A"``: input side, ``"G"``: output side) to how its inverse
    is represented (``"eigh"``, ``"reigh"``, ``"brand"``; EKFAC adds its scalings ``"S"``,
    Kronecker sums report the sum). ``held_rank`` is the number of eigenpairs held,
    ``applied_rank`` the number applied to the gradient at the current step; ``eigenvalues``
    the held spectra (descending; EKFAC's scalings as a ``d_out x d_in`` array). ``state`` is
    the family's NamedTuple itself (read-only by convention).
    """

    name: str
    method: str
    family: str
    d_in: int
    d_out: int
    n_updates: int
    kinds: dict[str, str]
    held_rank: dict[str, int]
    applied_rank: dict[str, int]
    eigenvalues: dict[str, Any]
    skipped_updates: int
    state: Any


class _Layer(NamedTuple):
    """The shell's record of a layer: static description, its functions and its state."""

    method: str
    index: int
    d_a: int
    d_g: int
    xp: Any
    device: Any
    dtype: Any
    family: Family
    state: Any


class KFACPreconditioner:
    r"""Per-layer Kronecker-factored curvature that any optimizer can embed.

    Parameters
    ----------
    method : str
        Default method of every layer (see ``METHODS`` and the table of the curvature docs
        page): ``"kfac"`` (dense EVD every ``T_inv``), ``"rkfac"`` (randomized EVD every
        ``T_inv``), ``"bkfac"`` (B-updates every ``T_brand``), ``"brkfac"`` (B-updates plus an
        RSVD overwrite every ``T_rsvd``), ``"bkfacc"`` (B-updates plus a light correction of
        ``phi_crc * rank`` modes every ``T_corct``), ``"auto"`` (per K-factor, B-updates or
        r-kfac, whichever the cost model of :func:`~.factors.choose_kind` finds cheaper;
        paper 001, Sec. 3.5), ``"ekfac"``, ``"ekfac-ra"``, ``"tkfac"``, ``"kpsvd"``,
        ``"deflation"``, ``"lanczos"`` and ``"kfac-corrected"``.
    layer_methods : dict, optional
        Per-layer overrides ``{layer name: method}`` (the paper uses B-updates for the wide FC
        layer only).
    decay : float
        EA factor ``rho`` of the K-factors (paper 001, eq. (5)), default 0.95.
    damping : float or callable
        ``damping_mode="relative"`` (default): the factor ``phi`` of ``lambda = phi lambda_max``,
        applied to each K-factor with its own largest eigenvalue (paper 001, Sec. 6; default
        0.1). ``"pi"``: the total Tikhonov damping ``gamma``, split between the factors as
        ``pi sqrt(gamma)`` and ``sqrt(gamma) / pi`` with ``pi^2 = (tr A / d_A) / (tr Gamma / d_G)``
        (Martens & Grosse 2015; paper 002, Sec. 2.2). ``"absolute"``: ``lambda`` itself on both
        factors. A callable of the step gives a schedule. One policy serves every method
        (:mod:`lowrank_online.curvature.damping`).
    damping_mode : {"relative", "pi", "absolute"}
    min_damping : float
        Floor of every factor's damping (default 1e-8).
    gradient_damping : float
        Gradient floor ``c`` (default 0: off): each layer's dampings are raised together until
        their product is at least ``c |grad|_F^2``, a lower bound on the curvature the batch's
        own gradients carry (see :mod:`lowrank_online.curvature.damping`). It keeps steps in
        proportion when the model's Fisher shrinks faster than the gradient, one source of the
        late-training loss spikes under relative damping (with ``damping_adaptation="lm"`` it
        removes them for some methods, not all: see the curvature docs, "Stability").
    damping_adaptation : {None, "lm"}
        ``"lm"``: Levenberg-Marquardt adaptation of the damping (Martens & Grosse 2015,
        Sec. 6.5) from the reduction ratio reported through :meth:`adapt_damping`; ``damping``
        and ``gradient_damping`` are multiplied by a scale in ``[1, 1e4]`` that grows by 20/19
        when a step achieves less than 1/4 of the predicted decrease and shrinks by 19/20 (not
        below 1) when it achieves more than 3/4. Default None (the damping follows ``damping``
        alone).
    continuation : bool
        Spectrum continuation for low-rank representations (paper 001, Sec. 3.5), default True.
    rank : int or callable
        The rank **applied to the gradient** (default 64): a randomized EVD computes that many
        eigenpairs, and the solves of a B-representation use its leading ``rank`` eigenpairs.
        Full-rank methods (kfac, ekfac, tkfac, kpsvd, the Kronecker sums) ignore it.
    held_rank : int or callable, optional
        B-methods: the rank kept through the truncation that starts each B-update (paper 001,
        Alg. 4 lines 3-4, the paper's ``r``); between updates a B-representation holds up to
        ``held_rank + N`` eigenpairs. Default: ``rank``. The paper's b-kfac, which applies all
        ``r + N`` held eigenpairs, is ``held_rank=r, rank=r + N``.
    oversample : int or callable
        RSVD oversampling (default 10).
    n_iter : int
        Power iterations of the randomized EVD (default 4).
    T_updt : int
        Statistics period: :meth:`wants_statistics` is true every ``T_updt`` steps.
    T_inv, T_brand, T_rsvd, T_corct : int
        Periods (in steps) of the inverse recomputation (kfac, rkfac, ekfac, tkfac, kpsvd and
        the Kronecker sums), the B-update, the RSVD overwrite (brkfac) and the correction
        (bkfacc). They take effect at the statistics steps, so choose multiples of ``T_updt``.
    phi_crc : float
        Fraction of the rank corrected by b-kfac-c (paper 001, Sec. 3.4), default 0.5.
    bkfac_init : {"exact", "reigh"}
        Start of a B-update representation: the first batch exactly (``M_0 = A_0 A_0^T``,
        default) or an RSVD of the dense factor, as the paper does.
    kl_clip : float, optional
        KL-clipping bound ``kappa`` used by :meth:`clip` (paper 002, App. E).
    kron_tol, kron_max_iter : float, int
        Convergence tolerance (default 1e-3) and iteration cap (default 100) of the matrix-free
        power / Lanczos solves of the Kronecker-sum methods, warm-started from the previous
        batch.
    inv_dtype : {None, "float32", "float64"}
        dtype of the dense eigendecompositions (kfac, rkfac, ekfac, the B-methods' refresh);
        default the statistics' dtype. The held factors stay in the statistics' dtype.
    max_failures : int
        Consecutive failed updates of one layer after which :meth:`update` raises instead of
        skipping (default 10).
    seed : int
        Base seed of the randomized decompositions (derived per layer, factor and step, so
        runs are reproducible and resumable without RNG state).

    Attributes
    ----------
    config : CurvatureConfig
        The validated, frozen options.
    steps : int
        Optimizer steps taken (:meth:`step`).
    skipped_updates : dict
        Per layer, the statistics updates skipped because a decomposition failed.

    Notes
    -----
    Typical loop::

        if pre.wants_statistics():
            for name, (a, g) in statistics.items():
                pre.update(name, a, g)
        steps = {name: pre.precondition(name, grad) for name, grad in grads.items()}
        pre.step()

    :meth:`precondition_factored` is the linear-time application of paper 001, Alg. 8. When
    the gradient is ``grad = G^T A`` for the factors of a batch, ``G`` and ``A`` are
    preconditioned separately, in ``O(r (d_in + d_out) N)``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_online.curvature import KFACPreconditioner
    >>> rng = np.random.default_rng(0)
    >>> pre = KFACPreconditioner("bkfac", rank=4)
    >>> pre.update("fc", rng.standard_normal((8, 6)), rng.standard_normal((8, 3)))
    >>> pre.precondition("fc", np.ones((3, 6))).shape
    (3, 6)
    >>> info = pre.layer_state("fc")
    >>> info.kinds, info.held_rank, info.applied_rank
    ({'A': 'brand', 'G': 'brand'}, {'A': 6, 'G': 3}, {'A': 4, 'G': 3})
    """

    def __init__(
        self,
        method: str = "kfac",
        *,
        layer_methods: dict[str, str] | None = None,
        decay: float = 0.95,
        damping: float | Callable[[int], float] = 0.1,
        damping_mode: str = "relative",
        min_damping: float = 1e-8,
        gradient_damping: float = 0.0,
        damping_adaptation: str | None = None,
        continuation: bool = True,
        rank: int | Callable[[int], int] = 64,
        held_rank: int | Callable[[int], int] | None = None,
        oversample: int | Callable[[int], int] = 10,
        n_iter: int = 4,
        T_updt: int = 1,
        T_inv: int = 10,
        T_brand: int = 1,
        T_rsvd: int = 10,
        T_corct: int = 10,
        phi_crc: float = 0.5,
        bkfac_init: str = "exact",
        kl_clip: float | None = None,
        kron_tol: float = 1e-3,
        kron_max_iter: int = 100,
        inv_dtype: str | None = None,
        max_failures: int = 10,
        seed: int = 0,
    ) -> None:
        options = dict(locals())
        del options["self"]
        options["layer_methods"] = layer_methods or {}
        self.config = CurvatureConfig(**options)
        self.steps = 0
        self.skipped_updates: dict[str, int] = {}
        self._failures: dict[str, int] = {}  # consecutive failures per layer
        self._damping_scale = 1.0
        self._layers: dict[str, _Layer] = {}
        # Index (the seed of a layer's randomized decompositions) of layers named before their
        # first update, in the order they were first named: a decomposition computed ahead of the
        # update (decompose) then draws what the update would draw.
        self._reserved: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"KFACPreconditioner({self.config.method!r}, layers={list(self._layers)}, steps={self.steps})"

    @property
    def method(self) -> str:
        """The default method."""
        return self.config.method

    @property
    def layers(self) -> list[str]:
        """Names of the layers that have statistics, in the order they were first seen."""
        return list(self._layers)

    def method_of(self, layer: str) -> str:
        return self.config.method_of(layer)

    # ---------------------------------------------------------------- schedule
    def wants_statistics(self) -> bool:
        """True when the current step is a statistics step (every ``T_updt`` steps)."""
        return self.steps % self.config.T_updt == 0

    def step(self) -> None:
        """Advance the iteration counter (call once per optimizer step)."""
        self.steps += 1

    # ---------------------------------------------------------------- validation
    def _check_stats(self, layer: str, a: Any, g: Any) -> Any:
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a string, got {type(layer).__name__}")
        if isinstance(a, Gram) or isinstance(g, Gram):
            return self._check_grams(layer, a, g)
        _validate.check_detached(a, "a")
        _validate.check_detached(g, "g")
        xp, a, g = _validate.check_statistics(a, g, promote=False)
        known = self._layers.get(layer)
        if known is not None:
            self._check_known(layer, known, xp, a, "statistics")
            if (a.shape[1], g.shape[1]) != (known.d_a, known.d_g):
                raise ValueError(
                    f"layer {layer!r} has d_in={known.d_a}, d_out={known.d_g}; got `a` with {a.shape[1]} "
                    f"columns and `g` with {g.shape[1]}"
                )
        return xp

    def _check_grams(self, layer: str, a: Any, g: Any) -> Any:
        """Statistics given as :class:`~lowrank_online.curvature.factors.Gram` factors."""
        if not (isinstance(a, Gram) and isinstance(g, Gram)):
            raise TypeError("`a` and `g` must both be rows or both be Gram factors, got "
                            f"{type(a).__name__} and {type(g).__name__}")
        spec = registry.lookup(self.config.method_of(layer))
        if not (spec.takes_gram or spec.takes_moments):
            raise ValueError(f"layer {layer!r} ({self.config.method_of(layer)}) needs the rows of its statistics: "
                             "only methods whose factors are all dense (kfac, rkfac) and EKFAC (with the batch's "
                             "moments) take Gram factors")
        xp = _array.namespace(("a.matrix", a.matrix), ("g.matrix", g.matrix))
        for what, x in (("a", a), ("g", g)):
            _validate.check_detached(x.matrix, f"{what}.matrix")
            _validate.check_array(x.matrix, f"{what}.matrix", xp, ndim=2)
            if x.matrix.shape[0] != x.matrix.shape[1]:
                raise ValueError(f"`{what}.matrix` must be square, got shape {tuple(x.matrix.shape)}")
            _validate.check_int(x.rows, f"{what}.rows")
        _array.same_device(("a.matrix", a.matrix), ("g.matrix", g.matrix))
        if a.rows != g.rows:
            raise ValueError(f"`a` has {a.rows} rows but `g` has {g.rows}; both count the samples of one batch")
        if a.matrix.dtype != g.matrix.dtype:
            raise TypeError(f"`a.matrix` has dtype {a.matrix.dtype} but `g.matrix` has {g.matrix.dtype}")
        known = self._layers.get(layer)
        if known is not None:
            self._check_known(layer, known, xp, a.matrix, "statistics")
            if (a.matrix.shape[1], g.matrix.shape[1]) != (known.d_a, known.d_g):
                raise ValueError(f"layer {layer!r} has d_in={known.d_a}, d_out={known.d_g}; got Gram factors of "
                                 f"widths {a.matrix.shape[1]} and {g.matrix.shape[1]}")
        return xp

    @staticmethod
    def _check_known(layer: str, known: _Layer, xp: Any, x: Any, what: str) -> None:
        if xp is not known.xp:
            raise TypeError(f"layer {layer!r} holds {_array._namespace_name(known.xp)} arrays, got "
                            f"{_array._namespace_name(xp)} {what}")
        if _array.device(x) != known.device:
            raise ValueError(f"layer {layer!r} lives on device {known.device!r}, got {what} on {_array.device(x)!r}")
        if x.dtype != known.dtype:
            raise TypeError(f"layer {layer!r} holds {_array.dtype_name(known.dtype)}, got {what} of dtype "
                            f"{_array.dtype_name(x.dtype)}")

    def _layer(self, layer: str) -> _Layer:
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a string, got {type(layer).__name__}")
        if layer not in self._layers:
            raise ValueError(f"no statistics for layer {layer!r} yet: call update({layer!r}, a, g) first")
        return self._layers[layer]

    def _check_grad(self, layer: str, grad: Any, known: _Layer, *, finite: bool = True, name: str = "grad",
                    block: bool = False) -> None:
        """The gradient (``block``: one of its column blocks, any width) of a known layer."""
        xp = _array.namespace((name, grad))
        if xp is not known.xp:
            raise TypeError(f"`{name}` is a {_array._namespace_name(xp)} array but layer {layer!r} holds "
                            f"{_array._namespace_name(known.xp)}")
        _validate.check_array(grad, name, xp, ndim=2, finite=finite)
        self._check_known(layer, known, xp, grad, f"`{name}`")
        if block and grad.shape[0] != known.d_g:
            raise ValueError(f"`{name}` of layer {layer!r} must have {known.d_g} rows, got {grad.shape[0]}")
        if not block and tuple(grad.shape) != (known.d_g, known.d_a):
            raise ValueError(f"`{name}` of layer {layer!r} must have shape {(known.d_g, known.d_a)}, "
                             f"got {tuple(grad.shape)}")

    # ---------------------------------------------------------------- operations
    def update(self, layer: str, a: Any, g: Any, *, decompositions: dict[str, Any] | None = None,
               moments: Any = None) -> None:
        """Feed one batch of statistics of ``layer``: activations ``a`` (N x d_in, ones column
        included by the caller for a bias) and pre-activation gradients ``g`` (N x d_out).

        Rejected input (bad shape, dtype, namespace, device, non-finite values, a schedule
        returning a bad value) raises and leaves the preconditioner untouched. An update whose
        computation fails (a decomposition that does not converge, a state that overflows, as a
        batch scaled by 1e200 would make it) is retried in float64 when the layer holds float32;
        if that fails too, the layer keeps its previous state, the skip is counted in
        :attr:`skipped_updates` and the first one of each layer is reported by a
        ``RuntimeWarning``. After ``max_failures`` consecutive failures of a layer the update
        raises :class:`~lowrank_online.DecompositionError`: a stream that is broken for good
        does not go on silently.

        ``decompositions`` (``{part: entry}``, what :meth:`decompose` returned for the same
        statistics at the same step, possibly on another process) are installed instead of
        being computed here. Everything else (the averages, the decompositions not given) is
        computed as usual, so processes that feed the same statistics and install the same
        entries hold bit-identical states. Only parts that :meth:`decompositions_due` lists can
        be given; entries are validated like a checkpoint (``ValueError`` naming the entry).

        For the methods whose factors are all dense (kfac, rkfac), ``a`` and ``g`` may instead
        be :class:`~lowrank_online.curvature.Gram` factors ``Gram(a^T a / N, N)`` and
        ``Gram(g^T g / N, N)``: the update is then the one of those rows (up to rounding),
        which is what data-parallel processes can sum instead of gathering rows.

        EKFAC (and EKFAC-ra) take Gram factors together with ``moments``, the sum over the
        batch's rows of :meth:`eigenbasis_moments` in the eigenbasis the layer holds after this
        update (processes that hold parts of the batch sum theirs). When the eigenbasis is due,
        that basis must be given in ``decompositions`` (:meth:`decompose` of the same Gram
        factors, whose scalings are then carried only: the update averages the batch in).
        """
        xp = self._check_stats(layer, a, g)
        self._check_schedules(self.steps)
        known = self._known(layer, a, g, xp)
        given = self._check_decompositions(layer, known, decompositions)
        moments = self._check_moments(layer, known, a, given, moments)
        compute = None if not given else tuple(p for p in known.family.parts if p not in given)
        new, reason = self._compute(known, a, g, compute, given, moments)
        if new is None:
            self._failed(layer, reason)
            return
        self._failures.pop(layer, None)
        self._reserved.pop(layer, None)
        self._layers[layer] = known._replace(state=new)

    def decompositions_due(self, layer: str) -> tuple[str, ...]:
        """The parts of ``layer`` whose decomposition an :meth:`update` at the current step
        computes (all of them for a layer without statistics yet).

        Parts (:attr:`~lowrank_online.curvature.registry.MethodSpec.parts`): each K-factor
        (``"A"``, ``"G"``) for the K-FAC family, ``"eigenbasis"`` for EKFAC, ``"state"`` (the
        whole update) for the other families. A due part is an EVD or randomized EVD every
        ``T_inv`` steps, a B-update every ``T_brand`` steps.

        A layer without statistics gets its index here (the seed of its randomized
        decompositions), in the order layers are first named: processes that name their layers
        in the same order before they :meth:`decompose` any of them draw the same numbers as
        one process feeding them in that order.
        """
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a string, got {type(layer).__name__}")
        known = self._layers.get(layer)
        if known is None:
            self._index_of(layer)
            return registry.lookup(self.config.method_of(layer)).parts
        return self._due_parts(known)

    def _index_of(self, layer: str) -> int:
        if layer not in self._reserved:
            self._reserved[layer] = len(self._layers) + len(self._reserved)
        return self._reserved[layer]

    def decompose(self, layer: str, a: Any, g: Any, parts: Any = None) -> dict[str, Any]:
        """Compute the decompositions that :meth:`update` with the same statistics would compute
        now, for ``parts`` (default: all), without changing the preconditioner.

        Returns ``{part: entry}`` for the requested parts that are due (see
        :meth:`decompositions_due`; ``{}`` when none is). An entry is a dict of arrays and
        numbers (a checkpoint's layout) that ``update(layer, a, g, decompositions=...)``
        installs, on this process or on another one fed the same statistics: that is how
        :class:`lowrank_online.torch.KFAC` computes each decomposition on one process only.

        Raises :class:`~lowrank_online.DecompositionError` when the computation fails (after
        the float64 retry of float32 layers); nothing is counted or changed, so that every
        process can then take the skip path together (:meth:`skip_update`).
        """
        xp = self._check_stats(layer, a, g)
        self._check_schedules(self.steps)
        known = self._known(layer, a, g, xp)
        family = known.family
        if parts is None:
            wanted = set(family.parts)
        else:
            if isinstance(parts, str):
                parts = (parts,)
            try:
                wanted = set(parts)
            except TypeError:
                raise TypeError(f"`parts` must be a collection of part names, got {type(parts).__name__}") from None
            unknown = sorted(map(str, wanted - set(family.parts)))
            if unknown:
                raise ValueError(
                    f"`parts` names {unknown}; layer {layer!r} ({known.method}) has parts {list(family.parts)}"
                )
        due = self._due_parts(known)
        compute = tuple(p for p in family.parts if p in wanted and p in due)
        if not compute:
            return {}
        new, reason = self._compute(known, a, g, compute, {})
        if new is None:
            raise _linalg.DecompositionError(f"layer {layer!r}: the decomposition of {list(compute)} failed at step "
                                             f"{self.steps}: {reason}")
        return {p: _state.to_dict(new if family.extract is None else family.extract(new, p)) for p in compute}

    def eigenbasis_moments(self, layer: str, a: Any, g: Any, *, decompositions: dict[str, Any] | None = None) -> Any:
        """The sums over the rows ``(a, g)`` that an EKFAC layer's scalings need, in the
        eigenbasis the layer holds after an :meth:`update` with ``decompositions`` (the
        current one when none is given): ``sum_i (Q_G^T g_i)^2 (Q_A^T a_i)^{2T}`` for EKFAC,
        ``Q_G^T (sum_i g_i a_i^T) Q_A`` for EKFAC-ra (paper 004, Alg. 1 and Sec. 3.2).

        Both add up over blocks of rows: data-parallel processes sum theirs (an all-reduce of
        a ``d_out x d_in`` array) and pass the total to ``update(layer, Gram(...), Gram(...),
        moments=...)`` instead of gathering the rows. Nothing changes here.

        Raises ``ValueError`` for a layer that is not EKFAC's, or whose eigenbasis is due
        (or which has none yet) while ``decompositions`` does not give it.

        Examples
        --------
        Two blocks of rows of one batch, fed as sums: the update of the rows themselves.

        >>> import numpy as np
        >>> from lowrank_online.curvature import Gram, KFACPreconditioner
        >>> rng = np.random.default_rng(0)
        >>> a, g = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
        >>> blocks = [(a[:5], g[:5]), (a[5:], g[5:])]
        >>> pre = KFACPreconditioner("ekfac")
        >>> A, G = Gram(a.T @ a / 8, 8), Gram(g.T @ g / 8, 8)
        >>> basis = pre.decompose("fc", A, G)  # due: the layer has no eigenbasis yet
        >>> M = sum(pre.eigenbasis_moments("fc", x, y, decompositions=basis) for x, y in blocks)
        >>> pre.update("fc", A, G, decompositions=basis, moments=M)
        >>> rows = KFACPreconditioner("ekfac")
        >>> rows.update("fc", a, g)
        >>> grad = np.ones((2, 3))
        >>> bool(np.allclose(pre.precondition("fc", grad), rows.precondition("fc", grad)))
        True
        """
        if isinstance(a, Gram) or isinstance(g, Gram):
            raise TypeError("`a` and `g` must be rows: the moments are sums over them")
        xp = self._check_stats(layer, a, g)
        known = self._known(layer, a, g, xp)
        if known.family.moments is None:
            raise ValueError(f"layer {layer!r} ({known.method}) has no eigenbasis moments: only EKFAC's scalings "
                             "need them")
        payload = self._moments_basis(layer, known, self._check_decompositions(layer, known, decompositions))
        return known.family.moments(known.state, a, g, payload)

    def _moments_basis(self, layer: str, known: _Layer, given: dict[str, Any]) -> Any:
        """The eigenbasis payload the moments are taken in: the one given, or None for the current
        basis; ``ValueError`` when the eigenbasis is due (or the layer has none) and not given."""
        payload = given.get("eigenbasis")
        if payload is None and "eigenbasis" in self._due_parts(known):
            raise ValueError(f"the eigenbasis of layer {layer!r} is due at step {self.steps}: the moments must be "
                             "taken in the new one; pass decompositions={'eigenbasis': ...} from decompose() of "
                             "the same Gram factors")
        return payload

    def _check_moments(self, layer: str, known: _Layer, a: Any, given: dict[str, Any], moments: Any) -> Any:
        """``moments`` of :meth:`update`: with Gram factors for EKFAC, never otherwise."""
        gram = isinstance(a, Gram)
        payload = given.get("eigenbasis")
        if moments is None:
            if payload is not None and payload.scalings is None:
                raise ValueError("`decompositions['eigenbasis']` has no scalings (a decomposition of Gram factors): "
                                 "install it with the batch's `moments`")
            if gram and known.family.moments is not None:
                raise ValueError(f"layer {layer!r} ({known.method}) fed Gram factors needs `moments` (the batch's "
                                 "eigenbasis_moments): its scalings depend on more than the Gram matrices")
            return None
        if known.family.moments is None:
            raise ValueError(f"`moments` is for EKFAC layers; layer {layer!r} is {known.method}")
        if not gram:
            raise ValueError("`moments` goes with Gram factors; rows give their moments themselves")
        xp = _array.namespace(("moments", moments))
        _validate.check_array(moments, "moments", xp, ndim=2, finite=True)
        self._check_known(layer, known, xp, moments, "`moments`")
        if tuple(moments.shape) != (known.d_g, known.d_a):
            raise ValueError(f"`moments` of layer {layer!r} must have shape {(known.d_g, known.d_a)}, "
                             f"got {tuple(moments.shape)}")
        self._moments_basis(layer, known, given)
        if payload is not None and payload.scalings is None and known.state is not None:
            raise ValueError("`decompositions['eigenbasis']` has no scalings, but layer "
                             f"{layer!r} has some to carry into the new basis")
        return moments

    def skip_update(self, layer: str, reason: str) -> None:
        """Take the skip path of a failed :meth:`update` for an update that failed elsewhere
        (a decomposition that another process computes for this one): the state is kept, the
        skip counted in :attr:`skipped_updates` and towards ``max_failures`` (which then raises
        :class:`~lowrank_online.DecompositionError`), the first one reported by a warning."""
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a string, got {type(layer).__name__}")
        if not isinstance(reason, str):
            raise TypeError(f"`reason` must be a string, got {type(reason).__name__}")
        self._failed(layer, reason)

    def release(self, layer: str) -> None:
        """Drop the state of ``layer`` (its memory), keeping its index: the seeds of the other
        layers' randomized decompositions, and of this one should it be fed again (it then
        starts afresh, as a new layer), stay those of a preconditioner that kept it.

        What a data-parallel process does with the layers other processes hold
        (:class:`lowrank_online.torch.Distributed` with ``grad_worker_fraction < 1``). A layer
        without statistics is ignored; a name that is not a string raises ``TypeError``.
        """
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a string, got {type(layer).__name__}")
        known = self._layers.pop(layer, None)
        if known is not None:
            self._reserved[layer] = known.index
            self._failures.pop(layer, None)

    def _known(self, layer: str, a: Any, g: Any, xp: Any) -> _Layer:
        """The layer's record, or a new one (no state yet) for its first statistics."""
        known = self._layers.get(layer)
        if known is None:
            method = self.config.method_of(layer)
            a_, g_ = (x.matrix if isinstance(x, Gram) else x for x in (a, g))
            shape = LayerShape(self._index_of(layer), int(a_.shape[1]), int(g_.shape[1]), xp, _array.device(a_))
            family = build(self.config, registry.lookup(method), shape)
            known = _Layer(method, shape.index, shape.d_a, shape.d_g, xp, shape.device, a_.dtype, family, None)
        return known

    def _due_parts(self, known: _Layer) -> tuple[str, ...]:
        if known.state is None or known.family.due is None:
            return known.family.parts
        return known.family.due(known.state, self.steps)

    def _check_decompositions(self, layer: str, known: _Layer, decompositions: Any) -> dict[str, Any]:
        """The payloads of ``decompositions``, rebuilt and validated before anything is computed."""
        if decompositions is None:
            return {}
        if not isinstance(decompositions, dict):
            raise TypeError(f"`decompositions` must be a dict {{part: entry}} from decompose(), "
                            f"got {type(decompositions).__name__}")
        family = known.family
        due = self._due_parts(known)
        out = {}
        for part, entry in decompositions.items():
            if part not in family.parts:
                raise ValueError(f"`decompositions` names part {part!r}; layer {layer!r} ({known.method}) has parts "
                                 f"{list(family.parts)}")
            if part not in due:
                raise ValueError(f"`decompositions[{part!r}]`: the decomposition of {part!r} of layer {layer!r} is not "
                                 f"due at step {self.steps} (due: {list(due)})")
            where = f"decompositions/{part}"
            cls = (family.part_types or {}).get(part, family.state_type)
            payload = _state.from_dict(cls, entry, xp=known.xp, device=known.device, dtype=known.dtype, where=where,
                                       copy=False)
            (family.check_part or (lambda _p, s, w: family.check(s, w)))(part, payload, where)
            out[part] = payload
        return out

    def _compute(self, known: _Layer, a: Any, g: Any, compute: Any, given: dict[str, Any],
                 moments: Any = None) -> tuple[Any, str]:
        """The new state (or None and why), retried in float64 for a float32 layer."""
        xp = known.xp
        new, reason = self._attempt(known, known.state, a, g, compute, given, moments)
        if new is None and _array.is_float32(xp, known.dtype) and _array.core_dtype(xp, known.device) == xp.float64:
            def up(x: Any) -> Any:
                return _array.astype(x, xp.float64, xp)

            state64 = None if known.state is None else _state.map_arrays(known.state, up)
            given64 = {p: _state.map_arrays(v, up) for p, v in given.items()}
            new64, reason64 = self._attempt(known, state64, map_statistics(a, up), map_statistics(g, up), compute,
                                            given64, None if moments is None else up(moments))
            if new64 is not None:
                new = _state.map_arrays(new64, lambda x: _array.astype(x, xp.float32, xp))
                if not _state.all_finite(new, xp):
                    new, reason = None, f"{reason}; in float64 the new state does not fit float32"
            else:
                reason = f"{reason}; in float64: {reason64}"
        return new, reason

    def _attempt(self, known: _Layer, state: Any, a: Any, g: Any, compute: Any = None,
                 given: dict[str, Any] | None = None, moments: Any = None) -> tuple[Any, str]:
        """``(new state, "")``, or ``(None, why)`` when the computation failed numerically.

        Overflow is detected on the result (a non-finite state), so NumPy's floating-point
        warnings about it are silenced here (the other namespaces do not warn).
        """
        family = known.family
        given = given or {}
        try:
            with _array.quiet_floating_point():
                if family.install is None and "state" in given:
                    new = given["state"]  # the whole update was computed elsewhere
                else:
                    extra = {} if moments is None else {"moments": moments}
                    if state is None:
                        new = family.init(a, g, self.steps, compute=compute, **extra)
                    else:
                        new = family.update(state, a, g, self.steps, compute=compute, **extra)
                    for part, payload in given.items():
                        new = family.install(new, part, payload, a, g, **extra) if extra else \
                            family.install(new, part, payload)
        except _linalg._LINALG_ERRORS as err:
            return None, str(err) or type(err).__name__
        if not _state.all_finite(new, known.xp):
            return None, "the new state holds NaN or infinity (statistics too large for the dtype?)"
        return new, ""

    def _failed(self, layer: str, reason: str) -> None:
        count = self._failures.get(layer, 0) + 1
        self._failures[layer] = count
        self.skipped_updates[layer] = self.skipped_updates.get(layer, 0) + 1
        if count >= self.config.max_failures:
            raise _linalg.DecompositionError(
                f"layer {layer!r}: {count} consecutive curvature updates failed (max_failures="
                f"{self.config.max_failures}); the last at step {self.steps}: {reason}"
            )
        if self.skipped_updates[layer] == 1:
            warnings.warn(f"layer {layer!r}: curvature update skipped at step {self.steps}: {reason}; the previous "
                          "state is kept (skips are counted in `skipped_updates`; this warning is shown once per "
                          "layer)", RuntimeWarning, stacklevel=3)

    def _check_schedules(self, step: int) -> None:
        """Evaluate the schedules of this step up front, so that a bad value is refused as
        input (``ValueError`` naming the schedule and the step), not taken for a failure."""
        self.config.rank_at(step)
        self.config.held_rank_at(step)
        self.config.oversample_at(step)

    def damping_value(self) -> Damping:
        """The damping parameters at the current step: the configured ``damping`` (or its
        schedule's value) and ``gradient_damping``, times the Levenberg-Marquardt scale (1
        without adaptation)."""
        scale = self._damping_scale
        return Damping(self.config.damping_at(self.steps) * scale, self.config.gradient_damping * scale)

    def dampings(self, layer: str, grad: Any = None) -> tuple[float, ...]:
        """Each factor's damping for ``layer`` at the current step: ``(lambda_A, lambda_Gamma)``
        for two-factor methods and Kronecker sums (applied to the first term's factors),
        ``(lambda,)`` for EKFAC's scalings. The gradient floor applies when ``grad`` is given."""
        known = self._layer(layer)
        grad_sq = 0.0
        if grad is not None:
            self._check_grad(layer, grad, known)
            grad_sq = float(known.xp.sum(grad * grad))
        return known.family.dampings(known.state, self.damping_value(), self.steps, grad_sq)

    def _prepared(self, layer: str) -> tuple[_Layer, Damping]:
        known = self._layer(layer)
        value = self.damping_value()
        state = known.family.prepare(known.state, value, self.steps)
        if state is not known.state:
            known = known._replace(state=state)
            self._layers[layer] = known
        return known, value

    def precondition(self, layer: str, grad: Any, *, check_finite: bool = True, overwrite_grad: bool = False) -> Any:
        """The preconditioned step ``F^{-1} grad`` of ``layer``, in the weight's own shape
        ``d_out x d_in`` (``[W b]`` with the bias gradient as last column).

        Parameters
        ----------
        layer : str
            A layer with statistics (see :meth:`update`).
        grad : array, shape (d_out, d_in)
            The gradient, in the layer's namespace, device and dtype.
        check_finite : bool, optional
            Refuse a ``grad`` that holds NaN or infinity (default True). A caller that has
            checked already (:class:`lowrank_online.torch.KFAC` does, to skip such steps)
            saves a pass over the gradient.
        overwrite_grad : bool, optional
            Allow the step to be written into ``grad``, whose values are then lost (like
            SciPy's ``overwrite_b``). The two-sided low-rank solves of the K-FAC family then
            allocate no ``d_out x d_in`` temporary, which on the CPU costs page faults as well
            as memory. Default False.
        """
        check_finite = _validate.check_bool(check_finite, "check_finite")
        overwrite_grad = _validate.check_bool(overwrite_grad, "overwrite_grad")
        known = self._layer(layer)
        self._check_grad(layer, grad, known, finite=check_finite)
        known, value = self._prepared(layer)
        return known.family.precondition(known.state, grad, value, self.steps, overwrite=overwrite_grad)

    def precondition_blocks(self, layer: str, blocks: Any, *, check_finite: bool = True) -> list[Any]:
        """The step of :meth:`precondition`, written in place into the gradient's column blocks.

        The gradient is ``grad = [X_1 ... X_p]``, for instance ``[W b]`` given as the weight's
        gradient and the bias's as one column: what a caller holding ``W`` and ``b`` separately
        would otherwise assemble into ``[W b]`` and split again (two copies of the gradient per
        step).

        Parameters
        ----------
        layer : str
            A layer with statistics.
        blocks : sequence of arrays, shapes (d_out, w_i) with ``sum w_i = d_in``
            The column blocks, in the layer's namespace, device and dtype; they are
            overwritten with the step's blocks.
        check_finite : bool, optional
            Refuse blocks that hold NaN or infinity (default True): ``ValueError``, the
            blocks unchanged. The K-FAC family tests them on their projection onto the input
            factor's eigenvectors (``r`` of the ``d_in`` columns' worth of entries), which is
            NaN or infinite whenever a block is (and when the projection itself overflows).

        Returns
        -------
        list of arrays
            The step's blocks (the input blocks, written in place where the namespace allows;
            other namespaces, and the families without block solves, return new arrays).
        """
        check_finite = _validate.check_bool(check_finite, "check_finite")
        known = self._layer(layer)
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise TypeError(f"`blocks` must be a non-empty list of arrays, got {type(blocks).__name__}")
        in_solve = known.family.precondition_blocks is not None
        for i, X in enumerate(blocks):
            self._check_grad(layer, X, known, finite=check_finite and not in_solve, name=f"blocks[{i}]", block=True)
        widths = [int(X.shape[1]) for X in blocks]
        if sum(widths) != known.d_a:
            raise ValueError(f"the column blocks of layer {layer!r} must have {known.d_a} columns in all, "
                             f"got {widths}")
        known, value = self._prepared(layer)
        if in_solve:
            return known.family.precondition_blocks(known.state, list(blocks), value, self.steps,
                                                    check_finite="blocks" if check_finite else None)
        xp = known.xp
        step = known.family.precondition(known.state, xp.concat(list(blocks), axis=1), value, self.steps,
                                         overwrite=True)
        out, start = [], 0
        for w in widths:
            out.append(step[:, start:start + w])
            start += w
        return out

    def precondition_factored(self, layer: str, G: Any, A: Any) -> tuple[Any, Any]:
        """Precondition a gradient given as factors, ``grad = G^T A`` (G: N x d_out, A: N x d_in).

        Returns ``(G_tilde, A_tilde)`` with ``step = G_tilde^T A_tilde``. For layers with two
        Kronecker factors (the K-FAC family, ``tkfac``, ``kpsvd``) this is paper 001, Alg. 8:
        ``G_tilde^T = Gamma^{-1} G^T`` and ``A_tilde^T = A^{-1} A^T``, ``O(r (d_in + d_out) N)``
        with low-rank representations, where the step matrix itself has ``d_out d_in`` entries.
        Methods without that structure (``ekfac``, ``ekfac-ra``, the two-term sums) precondition
        the full gradient ``G^T A`` and return ``(I, step)``.
        """
        known = self._layer(layer)
        xp = _array.namespace(("G", G), ("A", A))
        _validate.check_array(G, "G", xp, ndim=2)
        _validate.check_array(A, "A", xp, ndim=2)
        self._check_known(layer, known, xp, G, "`G`")
        self._check_known(layer, known, xp, A, "`A`")
        if G.shape[0] != A.shape[0]:
            raise ValueError(f"`G` has {G.shape[0]} rows but `A` has {A.shape[0]}")
        if (G.shape[1], A.shape[1]) != (known.d_g, known.d_a):
            raise ValueError(f"layer {layer!r} expects `G` with {known.d_g} columns and `A` with {known.d_a}, got "
                             f"{G.shape[1]} and {A.shape[1]}")
        known, value = self._prepared(layer)
        return known.family.precondition_factored(known.state, G, A, value, self.steps)

    def clip_scale(self, steps: list[Any], grads: list[Any], lr: float) -> float:
        """The KL-clipping factor of all layers' steps (1 when ``kl_clip`` is None)."""
        lr = _validate.check_real(lr, "lr", low=0.0, low_open=True)
        if len(steps) != len(grads):
            raise ValueError(f"`steps` has {len(steps)} entries but `grads` has {len(grads)}; pass one per layer")
        if self.config.kl_clip is None or not steps:
            return 1.0
        xp = array_api_compat.array_namespace(steps[0])
        return kl_clip_scale(steps, grads, lr, self.config.kl_clip, xp)

    def clip(self, steps: list[Any], grads: list[Any], lr: float) -> list[Any]:
        """Rescale all layers' steps by the KL-clipping factor (identity when ``kl_clip`` is None)."""
        scale = self.clip_scale(steps, grads, lr)
        return steps if scale == 1.0 else [s * scale for s in steps]

    # ---------------------------------------------------------------- damping adaptation
    @staticmethod
    def predicted_change(steps: list[Any], grads: list[Any], lr: float) -> float:
        """The damped quadratic model's predicted loss change of the update ``W <- W - lr step``.

        With ``step = (F + lambda)^{-1} grad`` (what :meth:`precondition` returns, before any
        clipping) the model ``q(delta) = grad^T delta + delta^T (F + lambda) delta / 2`` at
        ``delta = -lr step`` is ``-lr (1 - lr / 2) sum_l <grad_l, step_l>`` (Martens & Grosse
        2015, Sec. 6.5, with the preconditioner's own curvature model). When the steps are
        clipped by a factor ``c`` (:meth:`clip_scale`), pass ``lr * c``.
        """
        lr = _validate.check_real(lr, "lr", low=0.0, low_open=True)
        if not steps:
            return 0.0
        xp = array_api_compat.array_namespace(steps[0])
        inner = sum(float(xp.sum(s * g)) for s, g in zip(steps, grads, strict=True))
        return -lr * (1.0 - lr / 2.0) * inner

    def adapt_damping(self, actual_change: float, predicted_change: float) -> float:
        """Levenberg-Marquardt update of the damping from one step's reduction ratio.

        ``actual_change``: the loss after the step minus the loss before, on the same batch;
        ``predicted_change``: :meth:`predicted_change` of that step. Returns the new damping
        scale. Requires ``damping_adaptation="lm"``. A non-finite loss change counts as a
        failed step (the damping grows).
        """
        if self.config.damping_adaptation != "lm":
            raise ValueError("adapt_damping needs damping_adaptation='lm'")
        actual = float(actual_change)
        predicted = _validate.check_real(predicted_change, "predicted_change")
        if predicted < 0.0:
            ratio = actual / predicted if math.isfinite(actual) else -math.inf
            if ratio > 0.75:
                self._damping_scale = max(self._damping_scale * LM_OMEGA, 1.0)
            elif ratio < 0.25:
                self._damping_scale = min(self._damping_scale / LM_OMEGA, LM_RANGE)
        return self._damping_scale

    # ---------------------------------------------------------------- inspection
    def layer_state(self, layer: str) -> LayerState:
        """What ``layer`` holds: its method and family, the kind of each factor's
        representation, the held and applied ranks, the held spectra and the raw state.

        The figures examples, benchmarks and tests need, without reading private attributes.
        """
        known = self._layer(layer)
        info = known.family.describe(known.state, self.steps)
        return LayerState(layer, known.method, registry.lookup(known.method).family, known.d_a, known.d_g,
                          info["n_updates"], info["kinds"], info["held_rank"], info["applied_rank"],
                          info["eigenvalues"], self.skipped_updates.get(layer, 0), known.state)

    def summary(self) -> str:
        """One line per layer: method, sizes, representation kinds and ranks."""
        lines = [f"{'layer':<16} {'method':<15} {'d_in x d_out':>13}  kinds (held / applied rank)"]
        for name in self._layers:
            s = self.layer_state(name)
            kinds = ", ".join(
                f"{side}: {kind}" + (f" ({s.held_rank[side]}/{s.applied_rank[side]})" if side in s.held_rank else "")
                for side, kind in s.kinds.items()
            )
            lines.append(f"{name:<16} {s.method:<15} {f'{s.d_in} x {s.d_out}':>13}  {kinds}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays and numbers only (see :func:`lowrank_online.save_state`), format 2."""
        return {
            "format": STATE_FORMAT,
            "steps": self.steps,
            "method": self.config.method,
            "damping_scale": self._damping_scale,
            "skipped_updates": dict(self.skipped_updates),
            "layers": {
                name: {"method": k.method, "index": k.index, "d_a": k.d_a, "d_g": k.d_g,
                       "namespace": _array._namespace_name(k.xp), "dtype": _array.dtype_name(k.dtype),
                       "state": _state.to_dict(k.state)}
                for name, k in self._layers.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any], *, xp: Any = None, device: Any = None) -> None:
        """Restore :meth:`state_dict` (possibly loaded from npz) into this preconditioner.

        The options (methods, schedules) come from the constructor, as with PyTorch
        optimizers; a layer whose saved method differs from the configured one is refused.
        ``xp`` / ``device`` choose where the arrays go (default: the saved namespace's default
        device). Checkpoints of format 1 (lowrank_online 0.1.0) are converted; every entry is
        validated (keys, shapes, dtypes, finiteness) and a bad one is refused with a
        ``ValueError`` naming it, leaving the preconditioner unchanged.
        """
        if not isinstance(state, dict):
            raise TypeError(f"`state` must be a dict (from state_dict or load_state), got {type(state).__name__}")
        state = _legacy.upgrade(state)
        steps = _state._integer(state.get("steps"), "steps")
        scale = _state._real(state.get("damping_scale", 1.0), "damping_scale")
        saved_layers = state.get("layers", {})
        if not isinstance(saved_layers, dict):
            raise ValueError("checkpoint entry 'layers' must be a group of entries")
        layers = {}
        for name, saved in saved_layers.items():
            layers[name] = self._restore(name, saved, xp, device)
        skipped = {str(k): _state._integer(v, f"skipped_updates/{k}")
                   for k, v in dict(state.get("skipped_updates", {})).items()}
        self._layers, self.steps, self._damping_scale, self.skipped_updates = layers, steps, scale, skipped
        self._reserved = {}

    def _restore(self, name: str, saved: Any, xp: Any, device: Any) -> _Layer:
        where = f"layers/{name}"
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint entry {where!r} must be a group of entries")
        missing = {"method", "index", "d_a", "d_g", "namespace", "dtype", "state"} - set(saved)
        if missing:
            raise ValueError(f"checkpoint entry {where!r} lacks {sorted(missing)}")
        method = str(saved["method"])
        if method != self.config.method_of(name):
            raise ValueError(f"saved layer {name!r} used method {method!r} but this preconditioner uses "
                             f"{self.config.method_of(name)!r}")
        ns = xp if xp is not None else _namespace_by_name(str(saved["namespace"]), f"{where}/namespace")
        dev = device if device is not None else ns.__array_namespace_info__().default_device()
        dtype_name = str(saved["dtype"])
        if dtype_name not in ("float32", "float64"):
            raise ValueError(f"checkpoint entry '{where}/dtype' must be 'float32' or 'float64', got {dtype_name!r}")
        dtype = getattr(ns, dtype_name)
        index, d_a, d_g = (_state._integer(saved[k], f"{where}/{k}") for k in ("index", "d_a", "d_g"))
        shape = LayerShape(index, d_a, d_g, ns, dev)
        family = build(self.config, registry.lookup(method), shape)
        restored = _state.from_dict(family.state_type, saved["state"], xp=ns, device=dev, dtype=dtype,
                                    where=f"{where}/state")
        family.check(restored, f"{where}/state")
        return _Layer(method, shape.index, shape.d_a, shape.d_g, ns, dev, dtype, family, restored)


def _namespace_by_name(name: str, key: str) -> Any:
    known = {"numpy": "array_api_compat.numpy", "torch": "array_api_compat.torch", "cupy": "array_api_compat.cupy",
             "array_api_strict": "array_api_strict", "dask.array": "array_api_compat.dask.array"}
    if name not in known:
        raise ValueError(f"checkpoint entry {key!r} names an unknown array namespace {name!r}; pass `xp`")
    try:
        return importlib.import_module(known[name])
    except ImportError as err:
        raise ValueError(f"checkpoint entry {key!r} needs the {name!r} namespace, which is not installed; "
                         "pass `xp`") from err
