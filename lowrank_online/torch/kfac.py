"""K-FAC-family preconditioning of a PyTorch model's ``.grad``, fed by hooks.

:class:`KFAC` finds the model's supported modules, captures their statistics with hooks and feeds
them to a :class:`~lowrank_online.curvature.KFACPreconditioner`. The preconditioner does all the
numerics. This module only reshapes, scales and casts the statistics and gradients, and it
follows the preconditioner's conventions exactly: ``a`` with a ones column for a bias,
``A = a^T a / M``, ``Gamma = g^T g / M``, ``[W b]``.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import array_api_compat.torch as torch_xp
import torch
from torch import nn

from .. import _validate
from ..curvature import METHODS, KFACPreconditioner, kl_clip_scale, registry
from . import _fisher, _layers
from . import distributed as _distributed

__all__ = ["KFAC"]

FORMAT = "lowrank_online.torch.KFAC/1"

# Module -> weak reference to the KFAC that hooks it: a second live KFAC on the same module would
# feed every statistic twice.
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reads_batch_gradient(method: str) -> bool:
    """Methods whose statistic is the batch gradient of the rows fed (EKFAC-ra's running average)."""
    return registry.lookup(method).reads_batch_gradient


class _Chunk:
    """Statistics of one call of one layer in one forward pass."""

    __slots__ = ("a", "g", "scale", "handle", "output", "version")

    def __init__(self, a: torch.Tensor, k: int, output: torch.Tensor) -> None:
        self.a = a
        self.g: list[torch.Tensor | None] = [None] * k
        self.scale = 1.0  # the back-propagated gradients are ``scale`` times the per-term ones
        self.handle: Any = None
        self.output: torch.Tensor | None = output
        self.version = output._version  # an in-place op on the output changes it


class _Forward:
    """One captured forward pass of the model."""

    __slots__ = ("chunks", "terms", "c")

    def __init__(self) -> None:
        self.chunks: dict[str, list[_Chunk]] = {}
        self.terms = 0
        self.c = 1.0


class KFAC:
    r"""Precondition the ``.grad`` of a PyTorch model's layers with a K-FAC-family method.

    Finds the supported modules of ``model`` (``nn.Linear`` on inputs of any leading dimensions,
    ``nn.Conv2d`` with ``groups=1``, small ``nn.Embedding``), registers hooks that capture their
    statistics on statistics steps, and preconditions their gradients in place::

        kfac = KFAC(model)
        ...
        loss.backward()
        kfac.step()      # .grad <- F^{-1} .grad for the registered layers
        opt.step()

    Parameters of other modules (LayerNorm, BatchNorm, ...) are left to the base optimizer;
    :meth:`summary` lists them.

    Parameters
    ----------
    model : torch.nn.Module
        The model. Its forward pass (``model(x)``) must return the prediction the loss is
        computed on, or something ``output_fn`` maps to it.
    method : str
        Curvature method, any of :data:`lowrank_online.curvature.METHODS` (default ``"bkfac"``).
    skip_layers : str or iterable of str
        Modules to leave to the base optimizer: a pattern matches a module when it equals the
        module's class name or :func:`re.fullmatch`-es its qualified name. A pattern that
        matches nothing warns.
    fisher : {"mc", "empirical", "type2"}
        ``"mc"`` (default): gradients of the loss at targets sampled from the model's predictive
        distribution, back-propagated by an extra backward pass that KFAC runs itself at the end
        of the model's forward pass on statistics steps. ``"empirical"``: the statistics of the
        user's own backward pass (no extra pass). ``"type2"``: the exact GGN, one pass per
        output dimension.
    loss : str or torch.nn.Module
        ``"cross_entropy"`` (default), ``"mse"``, or an ``nn.CrossEntropyLoss`` /
        ``nn.MSELoss`` whose ``reduction`` (``"mean"`` or ``"sum"``) sets the scale of the
        factors (they equal curvlinops' for the same model and batch). Cross-entropy takes the
        class dimension at 1, as ``nn.CrossEntropyLoss`` does.
    weight_sharing : {"expand", "reduce"} or dict
        Convention for layers whose weight is shared over positions (Linear on ``(B, T, D)``,
        Conv2d). A dict maps module names to conventions (default ``"expand"`` for others).
    mc_samples : int
        Targets drawn per prediction with ``fisher="mc"`` (default 1).
    accumulation_steps : int
        Forward/backward passes (micro-batches) per :meth:`step`. Their statistics are
        concatenated into one update, which equals one update on the whole batch. With
        ``fisher="empirical"`` each micro-batch's loss is taken to be divided by
        ``accumulation_steps``, the usual way of making ``.grad`` the batch gradient.
    factor_dtype : torch.dtype, optional
        dtype of the statistics given to the preconditioner, so of its factors: float32
        (default, also for bf16/fp16 models) or float64 (default for float64 models).
    inv_dtype : torch.dtype, optional
        dtype of the dense eigendecompositions (``inv_dtype`` of the preconditioner: kfac,
        rkfac, ekfac, the refresh of the B-methods); default ``factor_dtype``. The small cores of
        the B-updates are float64 anyway. Half precisions are refused (cusolver's ``eigh``
        fails on them, and they lose the small eigenvalues).
    grad_scaler : torch.amp.GradScaler, optional
        The scaler of a mixed-precision loop: its scale is removed from the statistics and the
        Monte-Carlo pass is scaled like the loss. Call ``scaler.unscale_(opt)`` before
        :meth:`step` (as for gradient clipping), or use :class:`KFACOptimizer`.
    T_updt, T_inv, T_brand, T_rsvd, T_corct : int, optional
        Statistics period and the periods of the inverse work (see
        :class:`~lowrank_online.curvature.KFACPreconditioner`). Defaults: ``T_updt=10``,
        ``T_inv=100``, ``T_brand=T_updt`` (every statistics batch is B-updated),
        ``T_rsvd=T_corct=T_inv``; chosen from measurement, see ``docs/torch.rst``. The inverse
        periods must be multiples of ``T_updt``.
    kl_clip : float, optional
        KL-clipping bound (needs ``lr``, here or in :meth:`step`).
    lr : float, optional
        Learning rate used by KL-clipping.
    output_fn : callable, optional
        Maps the model's output to the prediction tensor (e.g. ``lambda out: out.logits``).
    max_embedding_size : int
        ``nn.Embedding`` modules with more entries are left to the base optimizer (their input
        factor is held as a dense ``V x V`` representation). Default 4096.
    keep_statistics : bool
        Keep the last ``(a, g)`` given to the preconditioner per layer, for :meth:`statistics`.
    seed : int
        Seed of the preconditioner's randomized decompositions and of the Monte-Carlo targets
        (derived per step and forward pass, so a resumed run draws what an uninterrupted one
        does).
    distributed : bool or Distributed, optional
        Share the curvature between the processes of an initialised ``torch.distributed``
        group (data parallel, e.g. under ``DistributedDataParallel``): ``True`` or a
        :class:`~lowrank_online.torch.Distributed` with options. Every process then ends each
        statistics step with the factors of the concatenated batch of all processes, and each
        decomposition is computed by one process and broadcast (see ``docs/distributed.rst``).
        :meth:`step` is then a collective: every process calls it. Default None (one process).
    **options
        Any other option of :class:`~lowrank_online.curvature.KFACPreconditioner` (``rank``,
        ``damping``, ``damping_mode``, ``decay``, ``layer_methods``, ...).

    Raises
    ------
    TypeError
        ``model`` is not a module, or an option has the wrong type.
    ValueError
        An option is out of range, or a module is already registered with another live
        :class:`KFAC` (call its :meth:`remove` first).
    NotImplementedError
        A supported module type in an unsupported configuration (``Conv2d`` with ``groups > 1``,
        a sparse or ``max_norm`` ``Embedding``); the message names it. Skip it with
        ``skip_layers``.

    Notes
    -----
    On a statistics step (every ``T_updt`` steps), every registered module records its input
    rows during the model's forward pass and a tensor hook on its output receives the output
    gradients. With ``fisher="mc"`` or ``"type2"``, a forward hook on the model runs the extra
    backward pass(es) right after the forward pass, with :func:`torch.autograd.grad` (the
    parameters' ``.grad`` are not touched, and the graph is retained for the user's backward).
    With ``fisher="empirical"`` the user's own backward pass fills them. :meth:`step` then
    feeds one update per layer, preconditions the gradients and advances the schedule.

    Statistics are always detached, so no autograd graph is ever held by the preconditioner.
    A non-finite statistic (fp16 overflow) skips that layer's update with a
    ``RuntimeWarning`` and leaves its curvature as it was.

    Only training-mode forward passes with gradients enabled are captured; wrap other ones in
    :meth:`paused`. A capturing forward pass beyond ``accumulation_steps`` without a
    :meth:`step` in between (e.g. a step skipped by a ``GradScaler``) discards the pending
    statistics with a warning.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from lowrank_online.torch import KFAC
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> kfac = KFAC(model, "kfac", rank=8)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    >>> loss = nn.functional.cross_entropy(model(x), y)
    >>> loss.backward()
    >>> kfac.step()
    >>> opt.step()
    >>> kfac.layers
    ['0', '2']
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "bkfac",
        *,
        skip_layers: str | Iterable[str] = (),
        fisher: str = "mc",
        loss: Any = "cross_entropy",
        weight_sharing: str | dict[str, str] = "expand",
        mc_samples: int = 1,
        accumulation_steps: int = 1,
        factor_dtype: torch.dtype | None = None,
        inv_dtype: torch.dtype | None = None,
        grad_scaler: Any = None,
        T_updt: int = 10,
        T_inv: int = 100,
        T_brand: int | None = None,
        T_rsvd: int | None = None,
        T_corct: int | None = None,
        kl_clip: float | None = None,
        lr: float | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
        max_embedding_size: int = 4096,
        keep_statistics: bool = False,
        seed: int = 0,
        distributed: Any = None,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {method!r}")
        if fisher not in _fisher.FISHERS:
            raise ValueError(f"`fisher` must be one of {_fisher.FISHERS}, got {fisher!r}")
        self.method, self.fisher = method, fisher
        uses_gradient = [m for m in [method, *dict(options.get("layer_methods") or {}).values()]
                         if _reads_batch_gradient(m)]
        if uses_gradient and fisher != "empirical":
            warnings.warn(
                f"method {uses_gradient[0]!r} averages the batch gradient of its statistics, which is the data "
                f"gradient only with fisher='empirical' (got fisher={fisher!r})",
                UserWarning,
                stacklevel=2,
            )
        self.loss = _fisher.loss_spec(loss, fisher)
        self.mc_samples = _validate.check_int(mc_samples, "mc_samples")
        if fisher != "mc" and self.mc_samples != 1:
            raise ValueError(f"`mc_samples` applies to fisher='mc' only, got {mc_samples} with fisher={fisher!r}")
        self.accumulation_steps = _validate.check_int(accumulation_steps, "accumulation_steps")
        self.max_embedding_size = _validate.check_int(max_embedding_size, "max_embedding_size")
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"`output_fn` must be callable, got {type(output_fn).__name__}")
        self.output_fn = output_fn
        if grad_scaler is not None and not callable(getattr(grad_scaler, "get_scale", None)):
            raise TypeError(f"`grad_scaler` must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")
        self.grad_scaler = grad_scaler
        self.lr = None if lr is None else _validate.check_real(lr, "lr", low=0.0, low_open=True)
        self.keep_statistics = bool(keep_statistics)
        self.seed = _validate.check_int(seed, "seed", minimum=0)
        self._schedule = self._check_schedule(T_updt, T_inv, T_brand, T_rsvd, T_corct)
        patterns = self._check_patterns(skip_layers)
        sharing = self._check_sharing(weight_sharing)

        self.model = model
        self._adapters: dict[str, _layers.LayerAdapter] = {}
        self._skipped: dict[str, str] = {}
        self._unsupported: dict[str, tuple[str, str, int]] = {}
        self._register(model, patterns, sharing)
        self.factor_dtype = self._check_factor_dtype(factor_dtype)
        self.inv_dtype = self._check_inv_dtype(inv_dtype)
        self._options = {"kl_clip": kl_clip, "seed": self.seed, **self._schedule, **options}
        if self.inv_dtype != self.factor_dtype:  # the preconditioner's dense decompositions
            self._options["inv_dtype"] = str(self.inv_dtype).rsplit(".", 1)[-1]
        self._pre = self._make_preconditioner()  # validates kl_clip and the other options
        self.kl_clip = kl_clip

        self._seen = dict.fromkeys(self._adapters, 0)  # forward calls per layer, captured or not
        self._fed = dict.fromkeys(self._adapters, 0)  # statistics updates per layer
        self._window: list[_Forward] = []  # captured passes since the last step
        self._current: _Forward | None = None
        self._depth = 0
        self._pass: int | None = None  # index of the Monte-Carlo / type-2 pass under way
        self._paused = 0
        self._warned: set[str] = set()
        self._last: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._predicted: float | None = None  # the last step's predicted loss change (LM)
        self._handles: list[Any] = []
        dist_options = _distributed.check(distributed)
        self._dist = None if dist_options is None else _distributed.Session(dist_options, self)
        self._install_hooks()

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_schedule(T_updt: int, T_inv: int, T_brand: int | None, T_rsvd: int | None,
                        T_corct: int | None) -> dict[str, int]:
        t_updt = _validate.check_int(T_updt, "T_updt")
        periods = {"T_updt": t_updt, "T_inv": _validate.check_int(T_inv, "T_inv")}
        periods["T_brand"] = t_updt if T_brand is None else _validate.check_int(T_brand, "T_brand")
        periods["T_rsvd"] = periods["T_inv"] if T_rsvd is None else _validate.check_int(T_rsvd, "T_rsvd")
        periods["T_corct"] = periods["T_inv"] if T_corct is None else _validate.check_int(T_corct, "T_corct")
        for key, value in periods.items():
            if value % t_updt:
                # The preconditioner acts on statistics steps only: other periods would be
                # silently rounded to the next statistics step.
                raise ValueError(f"`{key}` ({value}) must be a multiple of `T_updt` ({t_updt})")
        return periods

    @staticmethod
    def _check_patterns(skip_layers: Any) -> list[tuple[str, Any]]:
        if isinstance(skip_layers, str):
            skip_layers = [skip_layers]
        try:
            items = list(skip_layers)
        except TypeError:
            raise TypeError(
                f"`skip_layers` must be a string or an iterable of strings, got {type(skip_layers).__name__}"
            ) from None
        out = []
        for p in items:
            if not isinstance(p, str):
                raise TypeError(f"`skip_layers` must hold strings, got {type(p).__name__}")
            try:
                out.append((p, re.compile(p)))
            except re.error as err:
                raise ValueError(f"`skip_layers` pattern {p!r} is not a regular expression: {err}") from None
        return out

    @staticmethod
    def _check_sharing(weight_sharing: Any) -> Callable[[str], str]:
        if isinstance(weight_sharing, str):
            if weight_sharing not in _layers.SHARING:
                raise ValueError(f"`weight_sharing` must be one of {_layers.SHARING}, got {weight_sharing!r}")
            return lambda name: weight_sharing
        if isinstance(weight_sharing, dict):
            for k, v in weight_sharing.items():
                if v not in _layers.SHARING:
                    raise ValueError(f"`weight_sharing[{k!r}]` must be one of {_layers.SHARING}, got {v!r}")
            return lambda name: weight_sharing.get(name, "expand")
        raise TypeError(f"`weight_sharing` must be a string or a dict, got {type(weight_sharing).__name__}")

    def _check_factor_dtype(self, factor_dtype: Any) -> torch.dtype:
        if factor_dtype is None:
            dtypes = {a.module.weight.dtype for a in self._adapters.values()}
            return torch.float64 if torch.float64 in dtypes else torch.float32
        if factor_dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`factor_dtype` must be torch.float32 or torch.float64, got {factor_dtype}")
        return factor_dtype

    def _check_inv_dtype(self, inv_dtype: Any) -> torch.dtype:
        if inv_dtype is None or inv_dtype == self.factor_dtype:
            return self.factor_dtype
        if inv_dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"`inv_dtype` must not be a half precision, got {inv_dtype}: eigendecompositions "
                             "in half precision fail (cusolver) or lose the small eigenvalues")
        if inv_dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`inv_dtype` must be torch.float32 or torch.float64, got {inv_dtype}")
        return inv_dtype

    # ------------------------------------------------------------------ registration
    def _register(self, model: nn.Module, patterns: list[tuple[str, Any]], sharing: Callable[[str], str]) -> None:
        functional: dict[str, str] = {}
        for name, mod in model.named_modules():
            if isinstance(mod, nn.MultiheadAttention):
                # Its forward calls F.multi_head_attention_forward with out_proj's weight: the
                # out_proj module's hooks never fire (kfac-pytorch issue #267).
                for child, _ in mod.named_modules():
                    if child:
                        functional[f"{name}.{child}" if name else child] = (
                            f"called functionally by nn.MultiheadAttention {name!r}"
                        )
        matched = {p: False for p, _ in patterns}
        adapters: dict[str, _layers.LayerAdapter] = {}
        for name, mod in model.named_modules():
            label = name or "<model>"
            own = [p for p in mod.parameters(recurse=False)]
            hit = [p for p, rx in patterns if p == type(mod).__name__ or rx.fullmatch(name)]
            for p in hit:
                matched[p] = True
            if hit:
                if own:
                    self._skipped[label] = f"skip_layers {hit[0]!r}"
                continue
            if name in functional:
                if own:
                    self._unsupported[label] = (type(mod).__name__, functional[name], sum(p.numel() for p in own))
                continue
            adapter = _layers.adapter_for(label, mod, sharing(name), self.max_embedding_size)
            if isinstance(adapter, _layers.LayerAdapter):
                if not mod.weight.requires_grad:
                    self._skipped[label] = "frozen (weight.requires_grad is False)"
                    continue
                owner = _OWNERS.get(mod)
                if owner is not None and owner() is not None:
                    raise ValueError(
                        f"module {label!r} is already registered with another live KFAC; call remove() on that "
                        "one first (two would feed every statistic twice)"
                    )
                adapters[label] = adapter
            elif own:
                reason = adapter if isinstance(adapter, str) else "no K-FAC rule for this module type"
                self._unsupported[label] = (type(mod).__name__, reason, sum(p.numel() for p in own))
        for p, hit in matched.items():
            if not hit:
                warnings.warn(f"`skip_layers` pattern {p!r} matches no module of the model", UserWarning, stacklevel=3)
        self._adapters = adapters

    def _install_hooks(self) -> None:
        ref = weakref.ref(self)
        for adapter in self._adapters.values():
            _OWNERS[adapter.module] = ref
        self._handles.append(self.model.register_forward_pre_hook(partial(_root_pre_hook, ref)))
        for name, adapter in self._adapters.items():
            self._handles.append(adapter.module.register_forward_hook(partial(_layer_hook, ref, name)))
        # Registered last so that it runs after the hooks of the layers (the model itself may be one).
        self._handles.append(self.model.register_forward_hook(partial(_root_hook, ref), always_call=True))

    def remove(self) -> None:
        """Remove the hooks and release the modules (another :class:`KFAC` may then register them)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for adapter in self._adapters.values():
            owner = _OWNERS.get(adapter.module)
            if owner is not None and owner() is self:
                del _OWNERS[adapter.module]

    def _make_preconditioner(self) -> KFACPreconditioner:
        try:
            return KFACPreconditioner(self.method, **self._options)
        except TypeError as err:
            raise TypeError(f"KFAC got an option the preconditioner does not take: {err}") from None

    # ------------------------------------------------------------------ public state
    @property
    def layers(self) -> list[str]:
        """Names of the registered modules, in the model's order."""
        return list(self._adapters)

    @property
    def preconditioner(self) -> KFACPreconditioner:
        """The :class:`~lowrank_online.curvature.KFACPreconditioner` that holds the curvature
        (under :class:`Distributed` with ``grad_worker_fraction < 1``: of the layers this
        process works on)."""
        return self._pre

    @property
    def steps(self) -> int:
        return self._pre.steps

    @property
    def distributed_report(self) -> _distributed.StepReport | None:
        """What the last statistics step under ``distributed=`` did: bytes communicated, the owner
        of each decomposition, the idle processes, failures
        (:class:`~lowrank_online.torch.StepReport`); None without ``distributed`` or before
        the first statistics step."""
        return None if self._dist is None else self._dist.report

    def wants_statistics(self) -> bool:
        """True when the forward passes before the next :meth:`step` are captured."""
        return self._pre.wants_statistics()

    def statistics(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``(a, g)`` given to the preconditioner for ``layer`` (``keep_statistics=True``).

        ``a^T a / M`` and ``g^T g / M`` (``M`` rows) are the batch's K-factors, ``A`` and
        ``Gamma``, in the scale of the loss.
        """
        if not self.keep_statistics:
            raise ValueError("statistics are kept only with KFAC(..., keep_statistics=True)")
        if layer not in self._last:
            raise ValueError(f"no statistics for layer {layer!r} yet (registered: {self.layers})")
        return self._last[layer]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside this context are not captured (e.g. an extra training-mode pass)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # ------------------------------------------------------------------ hooks
    def _begin_forward(self) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        capture = (self.model.training and torch.is_grad_enabled() and not self._paused
                   and self._pre.wants_statistics())
        if not capture:
            self._current = None
            return
        if len(self._window) >= self.accumulation_steps:
            self._discard_window(f"a forward pass beyond accumulation_steps={self.accumulation_steps} came without "
                                 "kfac.step() (a step skipped by a GradScaler, or accumulation_steps not set)")
        self._current = _Forward()

    def _on_layer(self, name: str, inputs: tuple[Any, ...], output: Any) -> None:
        self._seen[name] += 1
        fwd = self._current
        if fwd is None or self._depth == 0:
            return
        adapter = self._adapters[name]
        adapter.check_shapes()
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        chunk = _Chunk(adapter.input_rows(inputs), self.mc_samples if self.fisher != "type2" else 0, output)
        if self.fisher == "empirical":
            chunk.output = None
        chunk.handle = output.register_hook(partial(_grad_hook, weakref.ref(self), name, chunk))
        fwd.chunks.setdefault(name, []).append(chunk)

    def _on_grad(self, name: str, chunk: _Chunk, grad: torch.Tensor) -> None:
        if self.fisher == "empirical":
            if chunk.g[0] is None:  # a second backward through the same graph is not the loss's
                chunk.g[0] = self._adapters[name].output_rows(grad)
                # The user's loss: c * sum of terms / accumulation_steps, times the scaler's scale.
                chunk.scale *= self._grad_scale() / self.accumulation_steps
        elif self._pass is not None:
            chunk.g[self._pass] = self._adapters[name].output_rows(grad)

    def _end_forward(self, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        fwd = self._current
        if self._depth > 0 or fwd is None:
            return
        self._current = None
        if output is None:  # the forward pass raised (this hook is always called) or returned nothing
            for chunks in fwd.chunks.values():
                for chunk in chunks:
                    chunk.handle.remove()
            return
        pred = self.output_fn(output) if self.output_fn is not None else output
        if not isinstance(pred, torch.Tensor) or pred.ndim == 0:
            what = type(pred).__name__ if not isinstance(pred, torch.Tensor) else "a 0-d tensor"
            raise TypeError(f"the model returned {what}; KFAC needs the prediction tensor the loss is computed on: "
                            "pass output_fn=... that selects it (e.g. lambda out: out.logits)")
        fwd.terms = _fisher.n_terms(pred, self.loss)
        fwd.c = _fisher.loss_scale(pred, self.loss)
        for chunks in fwd.chunks.values():
            for chunk in chunks:
                chunk.scale = fwd.c * (self._grad_scale() if self.fisher != "empirical" else 1.0)
        if self.fisher != "empirical":
            try:
                self._fisher_passes(fwd, pred)
            finally:
                for chunks in fwd.chunks.values():
                    for chunk in chunks:
                        chunk.handle.remove()
                        chunk.output = None
        self._window.append(fwd)
        if self._dist is not None and self.fisher != "empirical" and len(self._window) == self.accumulation_steps:
            # the window's statistics are complete: their exchange overlaps the user's backward
            self._dist.start()

    def _grad_scale(self) -> float:
        return float(self.grad_scaler.get_scale()) if self.grad_scaler is not None else 1.0

    def _fisher_passes(self, fwd: _Forward, pred: torch.Tensor) -> None:
        """The Monte-Carlo / type-2 backward passes, right after the forward pass.

        ``torch.autograd.grad`` to the layer outputs computes only what reaches them (no weight
        gradients) and leaves ``.grad`` alone. An output modified in place afterwards (e.g. by
        ``ReLU(inplace=True)``) no longer holds the pre-activation, so the pass goes to that
        layer's weight instead; the tensor hook registered at the layer's forward still receives
        the pre-activation gradient either way.
        """
        if not pred.requires_grad or not fwd.chunks:
            return
        gen = None
        if self.fisher == "mc":
            gen = _fisher.generator(pred.device, self.seed, self._pre.steps, len(self._window),
                                    None if self._dist is None else self._dist.rank)
        vs = _fisher.backprop_vectors(pred, self.loss, self.fisher, self.mc_samples, gen)
        inputs: list[torch.Tensor] = []
        for name, chunks in fwd.chunks.items():
            for chunk in chunks:
                chunk.g = [None] * len(vs)
                target = chunk.output if chunk.output._version == chunk.version else self._adapters[name].module.weight
                if not any(t is target for t in inputs):
                    inputs.append(target)
        scale = fwd.c * self._grad_scale()
        # Back-propagate at the scale of the user's loss (c times the GradScaler's), so that fp16
        # gradients neither underflow nor overflow where the user's backward would not.
        with _no_autocast(pred.device.type):
            for k, v in enumerate(vs):
                self._pass = k
                try:
                    torch.autograd.grad(pred, inputs, grad_outputs=(v * scale).to(pred.dtype),
                                        retain_graph=True, allow_unused=True)
                finally:
                    self._pass = None

    # ------------------------------------------------------------------ step
    def step(self, lr: float | dict[str, float] | None = None) -> None:
        """Feed the captured statistics, precondition the registered ``.grad`` in place, and
        advance the schedule.

        Parameters
        ----------
        lr : float or dict, optional
            Learning rate for KL-clipping (overrides the constructor's ``lr``), or a dict of them
            per registered layer (parameter groups with their own rates).

        Notes
        -----
        Layers without a gradient this step, or without curvature yet, keep their ``.grad``.
        Non-finite gradients (an overflowing mixed-precision step, which a ``GradScaler`` then
        skips) are left as they are.
        """
        lrs = self._check_lr(lr)
        for adapter in self._adapters.values():
            adapter.check_shapes()
        self._check_hooks_fired()
        self._feed()
        self._precondition(lrs)
        self._pre.step()

    def adapt_damping(self, loss_before: float, loss_after: float) -> float:
        """Levenberg-Marquardt step of the damping (``damping_adaptation="lm"``), from the loss of
        one batch before the last :meth:`step` and after the optimizer's step.

        The prediction is the damped quadratic model of the step :meth:`step` wrote into ``.grad``
        taken as ``W <- W - lr .grad`` (plain SGD with the ``lr`` KL-clipping uses); it needs that
        ``lr``. Returns the new damping scale (see
        :meth:`~lowrank_online.curvature.KFACPreconditioner.adapt_damping`)::

            loss = loss_fn(model(x), y); loss.backward(); kfac.step(); opt.step()
            with torch.no_grad():
                kfac.adapt_damping(loss.item(), loss_fn(model(x), y).item())
        """
        if self._pre.config.damping_adaptation != "lm":
            raise ValueError("adapt_damping needs KFAC(..., damping_adaptation='lm')")
        if self._predicted is None:
            raise ValueError(
                "no prediction to compare with: call step() first, with an `lr` (KFAC(lr=...) or step(lr))"
            )
        return self._pre.adapt_damping(float(loss_after) - float(loss_before), self._predicted)

    def _check_lr(self, lr: Any) -> dict[str, float] | None:
        if lr is None:
            lr = self.lr
        if isinstance(lr, dict):
            missing = [n for n in self._adapters if n not in lr]
            if missing:
                raise ValueError(f"`lr` has no learning rate for the layers {missing}")
            return {n: _validate.check_real(lr[n], f"lr[{n!r}]", low=0.0, low_open=True) for n in self._adapters}
        if lr is None:
            if self.kl_clip is not None:
                raise ValueError("`lr` is needed for KL-clipping: pass KFAC(..., lr=...) or step(lr=...)")
            return None
        value = _validate.check_real(lr, "lr", low=0.0, low_open=True)
        return dict.fromkeys(self._adapters, value)

    def _check_hooks_fired(self) -> None:
        for name, adapter in self._adapters.items():
            if self._seen[name] == 0 and adapter.module.weight.grad is not None and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"module {name!r} has a gradient but its forward hooks never fired: it is called "
                    "functionally (not through module.__call__), so KFAC cannot see its statistics; its "
                    "gradient is left to the base optimizer (add it to skip_layers to silence this)",
                    RuntimeWarning, stacklevel=3)

    def _discard_window(self, why: str) -> None:
        if self._dist is not None:
            self._dist.drop()
        if self._window:
            warnings.warn(f"KFAC discarded the statistics of {len(self._window)} forward pass(es): {why}",
                          RuntimeWarning, stacklevel=_caller_level())
        self._window = []

    def _chunks(self, name: str) -> list[_Chunk]:
        return [c for fwd in self._window for c in fwd.chunks.get(name, []) if c.g and all(g is not None for g in c.g)]

    def _row_count(self, name: str) -> int:
        """Rows of the ``(a, g)`` that :meth:`_rows` would build for ``name`` (0: no statistics)."""
        return sum(len(c.g) * c.a.shape[0] for c in self._chunks(name))

    def _rows(self, name: str, totals: tuple[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``(a, g)`` of one update from all captured passes of the window.

        ``totals`` (rows of this layer, terms of the loss) of the batch of all processes: the
        rows are then scaled as that batch's share (data parallel, :mod:`.distributed`).

        A layer called ``k`` times has ``k`` chunks per pass (weight sharing across calls,
        "expand"). With ``K`` back-propagated vectors per pass the ``a`` rows are repeated ``K``
        times so that row ``i`` of ``a`` and ``g`` stay one sample's (the per-sample methods
        need the pairs).
        """
        chunks = self._chunks(name)
        if not chunks:
            return None
        terms = sum(fwd.terms for fwd in self._window)
        K = len(chunks[0].g)
        rows = sum(K * c.a.shape[0] for c in chunks)
        if totals is not None:
            rows, terms = totals
        c_total = 1.0 / terms if self.loss.reduction == "mean" else 1.0
        w = c_total / K if self.fisher == "mc" else c_total
        if _reads_batch_gradient(self._pre.method_of(name)):
            # Their statistics also give the batch gradient, g^T a / rows, which must then be the
            # gradient of the loss (sum of w g a^T): the preconditioner's gradient convention
            # instead of the factors' scale (the two agree when w rows = 1, a mean loss without
            # weight sharing).
            s = rows * w
        else:
            # Gamma = g^T g / rows must be w * sum of the per-term gradients' outer products.
            s = math.sqrt(rows * w)
        dt = self.factor_dtype
        # Pass-major order: k micro-batches give the rows of their concatenated batch, in order.
        a = _cat([c.a.to(dt) for _ in range(K) for c in chunks])
        g = _cat([_scaled(c.g[k].to(dt), s / c.scale) for k in range(K) for c in chunks])
        return a, g

    def _feed(self) -> None:
        if self._dist is not None:
            # a collective: every process takes part on every statistics step, captured or not
            if self._pre.wants_statistics():
                self._dist.feed()
            self._window = []
            return
        if not self._window:
            return
        pending = self._window
        skipped = []
        try:
            for name in self._adapters:
                rows = self._rows(name)
                if rows is None:
                    continue
                a, g = rows
                if not (_finite_gram(a) and _finite_gram(g)):
                    skipped.append(name)
                    continue
                self._pre.update(name, a, g)
                self._fed[name] += 1
                if self.keep_statistics:
                    self._last[name] = (a, g)
        finally:
            if pending is self._window:
                self._window = []
        if skipped:
            warnings.warn(
                f"KFAC: the statistics of {skipped} at step {self._pre.steps} are not finite (fp16 overflow?); "
                "their curvature update is skipped and their curvature kept", RuntimeWarning, stacklevel=3)

    def _precondition(self, lrs: dict[str, float] | None) -> None:
        names, grads, steps = [], [], []
        nonfinite = []
        # The gradient matrices are the adapters' buffers or views of .grad, which receive the
        # steps anyway: the solves may work in them, unless KL-clipping or the damping's
        # quadratic model still needs the gradients after the steps are made.
        overwrite = self.kl_clip is None and self._pre.config.damping_adaptation != "lm"
        for name, adapter in self._adapters.items():
            if adapter.module.weight.grad is None:
                continue
            if not (name in self._pre.layers if self._dist is None else self._dist.has_curvature(name)):
                if name not in self._warned and self._fed[name] == 0 and self._seen[name]:
                    self._warned.add(name)
                    warnings.warn(f"layer {name!r} has no curvature yet; its gradient is not preconditioned",
                                  RuntimeWarning, stacklevel=3)
                continue
            blocks = adapter.grad_blocks(self.factor_dtype) if overwrite and self._dist is None else None
            if blocks is not None:
                # In place in .grad: W and b as two column blocks of [W b], no [W b] copy; the
                # finiteness test reads the small projection (see precondition_blocks), and a
                # refused gradient is left as it was.
                try:
                    out = self._pre.precondition_blocks(name, blocks)
                except _validate.NonFiniteError:
                    nonfinite.append(name)
                    continue
                for X, Y in zip(blocks, out, strict=True):
                    if Y.data_ptr() != X.data_ptr():  # a family without block solves
                        X.copy_(Y)
                continue
            G = adapter.grad_matrix().detach().to(self.factor_dtype)
            if not _finite_gram(G):
                nonfinite.append(name)
                continue
            names.append(name)
            grads.append(G)
            if self._dist is None or self._dist.holds(name):
                # finiteness was checked just above (_finite_gram), more strictly
                steps.append(self._pre.precondition(name, G, check_finite=False, overwrite_grad=overwrite))
            else:
                steps.append(None)
        if self._dist is not None:
            shared = self._dist.share_steps(
                names,
                dict(zip(names, steps, strict=True)),
                {n: tuple(g.shape) for n, g in zip(names, grads, strict=True)},
            )
            steps = [shared[n] for n in names]
        if nonfinite and self.grad_scaler is None:
            warnings.warn(f"the gradients of {nonfinite} are not finite; they are left unpreconditioned",
                          RuntimeWarning, stacklevel=3)
        factor = 1.0
        if self.kl_clip is not None and steps:
            lr_list = [lrs[n] for n in names]
            ref = lr_list[0]
            # Parameter groups with their own learning rates:
            # sum_l lr_l^2 <s_l, g_l> = ref^2 sum_l <(lr_l / ref)^2 s_l, g_l>.
            probe = (
                steps
                if all(v == ref for v in lr_list)
                else [s * (v / ref) ** 2 for s, v in zip(steps, lr_list, strict=True)]
            )
            factor = kl_clip_scale(probe, grads, ref, self.kl_clip, torch_xp)
        self._predicted = None
        if lrs is not None and steps and self._pre.config.damping_adaptation == "lm":
            # the damped quadratic model's loss change for W <- W - lr_l factor step_l, per layer
            self._predicted = sum(self._pre.predicted_change([s], [g], lrs[n] * factor)
                                  for n, s, g in zip(names, steps, grads, strict=True))
        if factor != 1.0:
            steps = [s * factor for s in steps]
        for name, step in zip(names, steps, strict=True):
            adapter = self._adapters[name]
            adapter.set_grad(step.to(adapter.module.weight.grad.dtype))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (``torch.load(weights_only=True)`` reads it).

        Statistics of micro-batches captured since the last :meth:`step` are not saved; take
        checkpoints between steps. Under :class:`Distributed` with ``grad_worker_fraction < 1``
        each layer's curvature lives on its workers only, and this call gathers it: call it on
        every process (rank 0 then saves the result, which is the same on every process).
        """
        if self._window:
            warnings.warn(
                "KFAC.state_dict() leaves out the statistics captured since the last step()", UserWarning, stacklevel=2
            )
        return {
            "format": FORMAT,
            "method": self.method,
            "fisher": self.fisher,
            "factor_dtype": str(self.factor_dtype).replace("torch.", ""),
            "layers": {name: a.signature() for name, a in self._adapters.items()},
            "preconditioner": (self._pre.state_dict() if self._dist is None
                               else self._dist.gathered_state(self._pre.state_dict())),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` onto the device of the registered parameters.

        Raises ``ValueError`` (and changes nothing) when the checkpoint belongs to another model
        (other layers or shapes), another method or another factor dtype. Under
        :class:`Distributed` every process loads the same checkpoint (of any world size) and
        keeps the layers it works on.
        """
        self._pre = self._prepared_load(state)
        self._window = []
        if self._dist is not None:
            self._dist.restored()

    def _prepared_load(self, state: dict[str, Any]) -> KFACPreconditioner:
        """A new preconditioner holding ``state``, built without touching this one."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a KFAC checkpoint (expected format {FORMAT!r})")
        for key, mine in (("method", self.method), ("factor_dtype", str(self.factor_dtype).replace("torch.", ""))):
            if state.get(key) != mine:
                raise ValueError(f"the checkpoint has {key}={state.get(key)!r}, this KFAC has {mine!r}")
        saved = dict(state["layers"])
        mine = {name: a.signature() for name, a in self._adapters.items()}
        problems = [f"missing {n!r}" for n in mine if n not in saved]
        problems += [f"unexpected {n!r}" for n in saved if n not in mine]
        problems += [f"{n!r}: saved {dict(saved[n])} but the model has {mine[n]}"
                     for n in mine if n in saved and dict(saved[n]) != mine[n]]
        if problems:
            raise ValueError("the checkpoint belongs to another model: " + "; ".join(problems))
        devices = {a.module.weight.device for a in self._adapters.values()}
        if len(devices) > 1:
            raise NotImplementedError(f"the registered layers live on several devices {sorted(map(str, devices))}; "
                                      "restoring them needs a per-layer device in KFACPreconditioner.load_state_dict")
        device = devices.pop() if devices else torch.device("cpu")
        pre = self._make_preconditioner()
        pre.load_state_dict(state["preconditioner"], xp=torch_xp, device=device)
        return pre

    # ------------------------------------------------------------------ report
    def summary(self) -> str:
        """A table of the registered modules, the modules left to the base optimizer (and why),
        and the registered modules whose forward hooks never fired."""
        lines = [
            f"KFAC {self.method!r}, fisher={self.fisher!r}, step {self._pre.steps}, "
            f"T_updt={self._schedule['T_updt']}, T_inv={self._schedule['T_inv']}, T_brand={self._schedule['T_brand']}",
            "registered (preconditioned):",
        ]
        for name, a in self._adapters.items():
            lines.append(f"  {name}: {a.describe()}, method {self._pre.method_of(name)!r}, "
                         f"{self._seen[name]} forward calls, {self._fed[name]} statistics updates")
        lines.append("left to the base optimizer:")
        if not self._skipped and not self._unsupported:
            lines.append("  (none)")
        for name, why in self._skipped.items():
            lines.append(f"  {name}: {why}")
        for name, (kind, why, n) in self._unsupported.items():
            lines.append(f"  {name}: {kind}, {n} parameters: {why}")
        never = [n for n in self._adapters if self._seen[n] == 0]
        if never and self._pre.steps:
            lines.append("registered but never called through their forward hooks (left to the base optimizer):")
            lines += [f"  {n}" for n in never]
        return "\n".join(lines)

    def __repr__(self) -> str:
        steps = self._pre.steps if "_pre" in self.__dict__ else 0
        return f"KFAC(method={self.method!r}, fisher={self.fisher!r}, layers={len(self._adapters)}, steps={steps})"


# Module-level hook functions hold the KFAC weakly, so that a KFAC that is dropped without
# remove() stops acting and releases its modules.
def _root_pre_hook(ref: weakref.ref, module: nn.Module, inputs: Any) -> None:
    kfac = ref()
    if kfac is not None:
        kfac._begin_forward()


def _root_hook(ref: weakref.ref, module: nn.Module, inputs: Any, output: Any) -> None:
    kfac = ref()
    if kfac is not None:
        kfac._end_forward(output)


def _layer_hook(ref: weakref.ref, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
    kfac = ref()
    if kfac is not None:
        kfac._on_layer(name, inputs, output)


def _grad_hook(ref: weakref.ref, name: str, chunk: _Chunk, grad: torch.Tensor) -> None:
    kfac = ref()
    if kfac is not None:
        kfac._on_grad(name, chunk, grad)


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside this package and torch.nn (a warning raised in a
    hook then points at the user's ``model(x)``)."""
    import sys

    here = __file__.rsplit("/", 1)[0]
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(here) or "/torch/nn/" in name):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x if factor == 1.0 else x * factor


def _finite_gram(x: torch.Tensor) -> bool:
    """Whether ``x^T x`` is finite: one reduction (no temporary), true exactly when every entry
    is finite and the sum of squares does not overflow, the condition for the factor."""
    return bool(torch.isfinite(torch.linalg.vector_norm(x)))


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type without autocast
        ctx = contextlib.nullcontext()
    with ctx:
        yield
