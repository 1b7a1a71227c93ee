"""K-FAC-family preconditioners for fully-connected layers, usable from any training loop.

Paper 001 (Puiu): k-fac, r-kfac (Alg. 1), b-kfac (Alg. 4), b-r-kfac (Alg. 5), b-kfac-c (Alg. 7),
the mixture of Sec. 3.5, spectrum continuation, damping ``lambda = phi lambda_max`` (Sec. 6) and
the linear-time inverse application of Alg. 8. Papers 002-004 add the Kronecker-sum methods,
TKFAC and EKFAC (see :mod:`lowrank_online.curvature.methods`).

Conventions: a layer's weight, bias included, is the ``d_out x d_in`` matrix ``[W b]``. The
caller appends a column of ones to the activations ``a`` (``N x d_in``) when the layer has a
bias. ``g`` (``N x d_out``) are the per-sample pre-activation gradients. The gradient is
``grad = (1/N) g^T a`` and the K-factors are ``A = E[a a^T]`` (``d_in x d_in``) and
``Gamma = E[g g^T]`` (``d_out x d_out``). The K-FAC step is ``Gamma^{-1} grad A^{-1}``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import array_api_compat

from .. import _array, _linalg
from . import factors
from .factors import FactorSpec

__all__ = ["KFACPreconditioner", "METHODS", "kl_clip_scale"]

# method -> kinds of the (A, Gamma) factors; "auto" is resolved per factor at the first update.
_KFAC_FAMILY = {
    "kfac": "eigh",
    "rkfac": "reigh",
    "bkfac": "brand",
    "brkfac": "brand",
    "bkfacc": "brand",
    "auto": "auto",
}
def _all_methods() -> tuple[str, ...]:
    from .methods import available_methods

    return tuple(available_methods())


METHODS: tuple[str, ...] = _all_methods()
_DAMPING_MODES = ("relative", "pi", "absolute")


def _schedule(value: Any, name: str, *, integer: bool, positive: bool = True) -> Callable[[int], float]:
    """A constant, or a callable of the step (the papers' rank / oversampling / damping schedules)."""
    if callable(value):
        return value
    if integer:
        v = _array.check_int(value, name, minimum=1 if positive else 0)
    else:
        v = _array.check_real(value, name, low=0.0, low_open=positive)
    return lambda k: v


def kl_clip_scale(steps: list[Any], grads: list[Any], lr: float, kappa: float, xp: Any) -> float:
    """KL-clipping factor ``min(1, sqrt(kappa / (lr^2 sum_l <step_l, grad_l>)))``.

    Martens & Grosse (2015) / Ba et al. (2017), the version of paper 002, App. E: the
    preconditioned step is rescaled so that the quadratic model's predicted KL change stays
    below ``kappa``.
    """
    total = sum(float(xp.sum(s * g)) for s, g in zip(steps, grads, strict=True))
    if not total > 0.0 or not math.isfinite(total):
        return 1.0
    return min(1.0, math.sqrt(kappa / (lr * lr * total)))


class KFACPreconditioner:
    r"""Per-layer Kronecker-factored curvature that any optimizer can embed.

    Parameters
    ----------
    method : str
        Default method of every layer: ``"kfac"`` (dense EVD every ``T_inv``), ``"rkfac"``
        (randomized EVD every ``T_inv``), ``"bkfac"`` (B-updates every ``T_brand``),
        ``"brkfac"`` (B-updates plus an RSVD overwrite every ``T_rsvd``), ``"bkfacc"``
        (B-updates plus a light correction of ``phi_crc * rank`` modes every ``T_corct``) or
        ``"auto"`` (per K-factor: B-updates where ``rank + N < d``, r-kfac elsewhere; paper 001,
        Sec. 3.5). With :mod:`lowrank_online.kronecker` available, also ``"ekfac"``,
        ``"ekfac-ra"``, ``"tkfac"``, ``"kpsvd"``, ``"deflation"``, ``"lanczos"`` and
        ``"kfac-corrected"`` (see ``METHODS``).
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
        factors. A callable of the step gives a schedule.
    continuation : bool
        Spectrum continuation for low-rank representations (paper 001, Sec. 3.5), default True.
    rank, oversample : int or callable
        Target rank (default 64) and RSVD oversampling (default 10), or schedules of the step.
    n_iter : int
        Power iterations of the randomized EVD (default 4).
    T_updt : int
        Statistics period: :meth:`wants_statistics` is true every ``T_updt`` steps.
    T_inv, T_brand, T_rsvd, T_corct : int
        Periods (in steps) of the inverse recomputation (kfac, rkfac), the B-update, the RSVD
        overwrite (brkfac) and the correction (bkfacc). They take effect at the statistics steps,
        so choose multiples of ``T_updt``.
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
        batch. The factors are exponentially averaged across batches, so each batch's solve
        need not be tight.
    seed : int
        Base seed of the randomized decompositions (derived per layer, factor and step, so
        runs are reproducible and resumable without RNG state).

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
    """

    def __init__(
        self,
        method: str = "kfac",
        *,
        layer_methods: dict[str, str] | None = None,
        decay: float = 0.95,
        damping: float | Callable[[int], float] = 0.1,
        damping_mode: str = "relative",
        continuation: bool = True,
        rank: int | Callable[[int], int] = 64,
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
        min_damping: float = 1e-8,
        seed: int = 0,
    ) -> None:
        from .methods import available_methods

        self._methods = available_methods()
        self.method = self._check_method(method, "method")
        self.layer_methods = {str(k): self._check_method(v, f"layer_methods[{k!r}]") for k, v in (layer_methods or {}).items()}
        self.decay = _array.check_real(decay, "decay", low=0.0, high=1.0, low_open=True)
        self.damping = _schedule(damping, "damping", integer=False)
        if damping_mode not in _DAMPING_MODES:
            raise ValueError(f"`damping_mode` must be one of {_DAMPING_MODES}, got {damping_mode!r}")
        self.damping_mode = damping_mode
        self.continuation = bool(continuation)
        self.rank = _schedule(rank, "rank", integer=True)
        self.oversample = _schedule(oversample, "oversample", integer=True, positive=False)
        self.n_iter = _array.check_int(n_iter, "n_iter", minimum=0)
        self.T_updt = _array.check_int(T_updt, "T_updt")
        self.T_inv = _array.check_int(T_inv, "T_inv")
        self.T_brand = _array.check_int(T_brand, "T_brand")
        self.T_rsvd = _array.check_int(T_rsvd, "T_rsvd")
        self.T_corct = _array.check_int(T_corct, "T_corct")
        self.phi_crc = _array.check_real(phi_crc, "phi_crc", low=0.0, high=1.0, low_open=True)
        if bkfac_init not in ("exact", "reigh"):
            raise ValueError(f"`bkfac_init` must be 'exact' or 'reigh', got {bkfac_init!r}")
        self.bkfac_init = bkfac_init
        self.kl_clip = None if kl_clip is None else _array.check_real(kl_clip, "kl_clip", low=0.0, low_open=True)
        self.kron_tol = _array.check_real(kron_tol, "kron_tol", low=0.0, low_open=True)
        self.kron_max_iter = _array.check_int(kron_max_iter, "kron_max_iter", minimum=1)
        self.min_damping = _array.check_real(min_damping, "min_damping", low=0.0, low_open=True)
        self.seed = _array.check_int(seed, "seed", minimum=0)
        self.steps = 0
        self._layers: dict[str, Any] = {}

    # ---------------------------------------------------------------- configuration
    def _check_method(self, method: Any, name: str) -> str:
        if not isinstance(method, str) or method not in self._methods:
            raise ValueError(f"`{name}` must be one of {sorted(self._methods)}, got {method!r}")
        return method

    def method_of(self, layer: str) -> str:
        return self.layer_methods.get(layer, self.method)

    def _spec(self, method: str, side: str, d: int, n: int, index: int) -> FactorSpec:
        kind = _KFAC_FAMILY[method]
        if kind == "auto":
            kind = "brand" if int(self.rank(0)) + n < d else "reigh"
        return FactorSpec(
            kind=kind,
            decay=self.decay,
            rank=self.rank,
            oversample=self.oversample,
            n_iter=self.n_iter,
            T_inv=self.T_inv,
            T_brand=self.T_brand,
            T_rsvd=self.T_rsvd if method == "brkfac" else None,
            T_corct=self.T_corct if method == "bkfacc" else None,
            phi_crc=self.phi_crc,
            init=self.bkfac_init,
            seed=(self.seed, index, 0 if side == "A" else 1),
        )

    # ---------------------------------------------------------------- schedule
    def wants_statistics(self) -> bool:
        """True when the current step is a statistics step (every ``T_updt`` steps)."""
        return self.steps % self.T_updt == 0

    def step(self) -> None:
        """Advance the iteration counter (call once per optimizer step)."""
        self.steps += 1

    @property
    def layers(self) -> list[str]:
        return list(self._layers)

    # ---------------------------------------------------------------- validation
    def _check_stats(self, layer: str, a: Any, g: Any) -> tuple[Any, Any, Any]:
        if not isinstance(layer, str):
            raise TypeError(f"`layer` must be a string, got {type(layer).__name__}")
        xp = _array.namespace(("a", a), ("g", g))
        _array.same_device(("a", a), ("g", g))
        _array.check_array(a, "a", xp, ndim=2)
        _array.check_array(g, "g", xp, ndim=2)
        if a.shape[0] != g.shape[0]:
            raise ValueError(f"`a` has {a.shape[0]} rows but `g` has {g.shape[0]}; both hold one row per sample")
        if a.shape[0] == 0:
            raise ValueError("`a` and `g` hold no samples")
        if a.dtype != g.dtype:
            raise TypeError(f"`a` has dtype {a.dtype} but `g` has {g.dtype}")
        known = self._layers.get(layer)
        if known is not None:
            if xp is not known.xp:
                raise TypeError(f"layer {layer!r} holds {_array._namespace_name(known.xp)} arrays, got {_array._namespace_name(xp)}")
            if _array.device(a) != known.device:
                raise ValueError(f"layer {layer!r} lives on device {known.device!r}, got arrays on {_array.device(a)!r}")
            if a.dtype != known.dtype:
                raise TypeError(f"layer {layer!r} holds {known.dtype}, got {a.dtype}")
            if (a.shape[1], g.shape[1]) != (known.d_a, known.d_g):
                raise ValueError(
                    f"layer {layer!r} has d_in={known.d_a}, d_out={known.d_g}; got `a` with {a.shape[1]} "
                    f"columns and `g` with {g.shape[1]}"
                )
        return xp, a, g

    def _layer(self, layer: str) -> Any:
        if layer not in self._layers:
            raise ValueError(f"no statistics for layer {layer!r} yet: call update({layer!r}, a, g) first")
        state = self._layers[layer]
        if not state.ready():
            raise ValueError(f"layer {layer!r} has no inverse representation yet")
        return state

    # ---------------------------------------------------------------- operations
    def update(self, layer: str, a: Any, g: Any) -> None:
        """Feed one batch of statistics of ``layer``: activations ``a`` (N x d_in, ones column
        included by the caller for a bias) and pre-activation gradients ``g`` (N x d_out).

        Rejected input (bad shape, dtype, namespace, device, non-finite values) raises and leaves
        the preconditioner untouched; a decomposition that fails keeps the previous
        representation of the layer and warns.
        """
        xp, a, g = self._check_stats(layer, a, g)
        state = self._layers.get(layer)
        fresh = state is None
        if fresh:
            from .methods import make_layer

            state = make_layer(self, layer, len(self._layers), self.method_of(layer), a, g, xp)
        try:
            state.update(a, g, self.steps)
        except _linalg.DecompositionError as err:
            warnings.warn(f"layer {layer!r}: curvature update skipped at step {self.steps}: {err}", RuntimeWarning, stacklevel=2)
            return
        if fresh:
            self._layers[layer] = state

    def dampings(self, layer: str) -> tuple[float, float]:
        """``(lambda_A, lambda_Gamma)`` of a K-FAC-family layer at the current step."""
        state = self._layer(layer)
        return self._dampings(state)

    def _dampings(self, state: Any) -> tuple[float, float]:
        xp, k = state.xp, self.steps
        value = float(self.damping(k))
        A, G = state.state["A"], state.state["G"]
        if self.damping_mode == "relative":
            lam = (value * factors.lambda_max(A, xp), value * factors.lambda_max(G, xp))
        elif self.damping_mode == "absolute":
            lam = (value, value)
        else:
            ta = factors.trace(A, state.d_a, self.continuation, xp) / state.d_a
            tg = factors.trace(G, state.d_g, self.continuation, xp) / state.d_g
            pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            root = math.sqrt(value)
            lam = (pi * root, root / pi)
        return (max(lam[0], self.min_damping), max(lam[1], self.min_damping))

    def _check_grad(self, layer: str, grad: Any, state: Any) -> None:
        xp = _array.namespace(("grad", grad))
        if xp is not state.xp:
            raise TypeError(f"`grad` is a {_array._namespace_name(xp)} array but layer {layer!r} holds {_array._namespace_name(state.xp)}")
        _array.check_array(grad, "grad", xp, ndim=2)
        if tuple(grad.shape) != (state.d_g, state.d_a):
            raise ValueError(f"`grad` of layer {layer!r} must have shape {(state.d_g, state.d_a)}, got {tuple(grad.shape)}")

    def precondition(self, layer: str, grad: Any) -> Any:
        """The preconditioned step ``F^{-1} grad`` of ``layer``, in the weight's own shape
        ``d_out x d_in`` (``[W b]`` with the bias gradient as last column)."""
        state = self._layer(layer)
        self._check_grad(layer, grad, state)
        return state.precondition(grad, self)

    def precondition_factored(self, layer: str, G: Any, A: Any) -> tuple[Any, Any]:
        """Precondition a gradient given as factors, ``grad = G^T A`` (G: N x d_out, A: N x d_in).

        Returns ``(G_tilde, A_tilde)`` with ``step = G_tilde^T A_tilde``. For layers with two
        Kronecker factors (the K-FAC family, ``tkfac``, ``kpsvd``) this is paper 001, Alg. 8:
        ``G_tilde^T = Gamma^{-1} G^T`` and ``A_tilde^T = A^{-1} A^T``, ``O(r (d_in + d_out) N)``
        with low-rank representations, where the step matrix itself has ``d_out d_in`` entries.
        Methods without that structure (``ekfac``, ``ekfac-ra``, the two-term sums) precondition
        the full gradient ``G^T A`` and return ``(I, step)``.
        """
        state = self._layer(layer)
        xp = _array.namespace(("G", G), ("A", A))
        _array.check_array(G, "G", xp, ndim=2)
        _array.check_array(A, "A", xp, ndim=2)
        if G.shape[0] != A.shape[0]:
            raise ValueError(f"`G` has {G.shape[0]} rows but `A` has {A.shape[0]}")
        if (G.shape[1], A.shape[1]) != (state.d_g, state.d_a):
            raise ValueError(f"layer {layer!r} expects G with {state.d_g} columns and A with {state.d_a}, got {G.shape[1]} and {A.shape[1]}")
        return state.precondition_factored(G, A, self)

    def clip(self, steps: list[Any], grads: list[Any], lr: float) -> list[Any]:
        """Rescale all layers' steps by the KL-clipping factor (identity when ``kl_clip`` is None)."""
        if self.kl_clip is None or not steps:
            return steps
        xp = array_api_compat.array_namespace(steps[0])
        scale = kl_clip_scale(steps, grads, lr, self.kl_clip, xp)
        return steps if scale == 1.0 else [s * scale for s in steps]

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays and numbers only (see :func:`lowrank_online.save_state`)."""
        return {
            "steps": self.steps,
            "method": self.method,
            "layers": {name: {"method": st.method, "index": st.index, "d_a": st.d_a, "d_g": st.d_g,
                              "namespace": _array._namespace_name(st.xp), "dtype": str(st.dtype).split(".")[-1],
                              **st.to_dict()}
                       for name, st in self._layers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], *, xp: Any = None, device: Any = None) -> None:
        """Restore :meth:`state_dict` (possibly loaded from npz) into this preconditioner.

        The options (methods, schedules) come from the constructor, as with PyTorch
        optimizers; a layer whose saved method differs from the configured one is refused.
        ``xp`` / ``device`` choose where the arrays go (default: the saved namespace's default
        device).
        """
        from .methods import restore_layer

        steps = _array.check_int(int(state["steps"]), "state['steps']", minimum=0)
        layers = {}
        for name, saved in dict(state.get("layers", {})).items():
            method = str(saved["method"])
            if method != self.method_of(name):
                raise ValueError(f"saved layer {name!r} used method {method!r} but this preconditioner uses {self.method_of(name)!r}")
            ns = xp if xp is not None else _namespace_by_name(str(saved["namespace"]))
            dev = device if device is not None else ns.__array_namespace_info__().default_device()
            layers[name] = restore_layer(self, name, saved, ns, dev)
        self._layers = layers
        self.steps = steps


def _namespace_by_name(name: str) -> Any:
    import importlib

    if name == "array_api_strict":
        return importlib.import_module("array_api_strict")
    return importlib.import_module(f"array_api_compat.{name}")
