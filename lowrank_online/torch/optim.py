"""A ``torch.optim.Optimizer`` that preconditions with :class:`~lowrank_online.torch.KFAC` and
steps with a base optimizer."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .kfac import KFAC

__all__ = ["KFACOptimizer"]

_BASES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


_KEY = "curvature"  # the entry of the KFAC state in the optimizer's state_dict

class KFACOptimizer(torch.optim.Optimizer):
    r"""K-FAC preconditioning and a base optimizer in one ``torch.optim.Optimizer``.

    ``step()`` preconditions the gradients of the registered layers (:meth:`KFAC.step`) and then
    runs the base optimizer's step, which also updates the parameters KFAC does not handle.

    Parameters
    ----------
    model_or_params : torch.nn.Module or iterable
        The model (all its parameters are optimized), or parameters / parameter groups; then
        ``model`` must be given, and only layers whose parameters are all in the groups are
        preconditioned.
    base : {"sgd", "adam", "adamw"}, Optimizer subclass, or Optimizer instance
        The base optimizer. A class or name is built on the parameters with ``lr`` and
        ``base_options``; an instance (already built on the model's parameters) is used as it is.
    model : torch.nn.Module, optional
        The model, when ``model_or_params`` holds parameters.
    lr : float, optional
        Learning rate of the base optimizer (also used by KL-clipping, per parameter group).
    base_options : dict, optional
        Other options of the base optimizer (``momentum``, ``weight_decay``, ``betas``, ...).
    **kfac_options
        Options of :class:`KFAC` (``method``, ``fisher``, ``damping``, ``T_updt``, ...).

    Attributes
    ----------
    kfac : KFAC
        The preconditioner (``optimizer.kfac.summary()`` lists the layers).
    base : torch.optim.Optimizer
        The base optimizer; ``param_groups`` and ``state`` are its own, so learning-rate
        schedulers act on it.

    Notes
    -----
    Weight decay of the base optimizer is applied after preconditioning (decoupled from the
    curvature). With a ``GradScaler``, ``scaler.step(optimizer)`` unscales the gradients before
    calling :meth:`step`, and skips it on overflow; pass ``grad_scaler=scaler`` so that KFAC
    also unscales its statistics.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from lowrank_online.torch import KFACOptimizer
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> opt = KFACOptimizer(model, "sgd", lr=0.1, base_options={"momentum": 0.9}, method="kfac")
    >>> x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    >>> opt.zero_grad()
    >>> nn.functional.cross_entropy(model(x), y).backward()
    >>> opt.step()
    >>> sorted(opt.state_dict())
    ['curvature', 'param_groups', 'state']
    """

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        base: str | type[torch.optim.Optimizer] | torch.optim.Optimizer = "sgd",
        *,
        model: nn.Module | None = None,
        lr: float | None = None,
        base_options: dict[str, Any] | None = None,
        **kfac_options: Any,
    ) -> None:
        if isinstance(model_or_params, nn.Module):
            if model is not None and model is not model_or_params:
                raise ValueError("`model` is given twice (as `model_or_params` and as `model`) with different modules")
            model = model_or_params
            params: Any = list(model.parameters())
        else:
            if not isinstance(model, nn.Module):
                raise TypeError("`model` (a torch.nn.Module) is needed when `model_or_params` holds parameters: "
                                "KFAC hooks the model's modules")
            params = list(model_or_params)
        if isinstance(base, torch.optim.Optimizer):
            if lr is not None or base_options:
                raise ValueError(
                    "`lr` and `base_options` configure a base optimizer built here; `base` is already built"
                )
            self.base = base
        else:
            cls = _BASES.get(base.lower()) if isinstance(base, str) else base
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
                raise ValueError(
                    f"`base` must be one of {sorted(_BASES)}, an Optimizer class or instance, got {base!r}"
                )
            opts = dict(base_options or {})
            if lr is not None:
                opts["lr"] = lr
            self.base = cls(params, **opts)
        in_opt = {id(p) for group in self.base.param_groups for p in group["params"]}
        outside = [name for name, mod in model.named_modules()
                   if any(id(p) not in in_opt for p in mod.parameters(recurse=False))]
        skip = kfac_options.pop("skip_layers", ())
        skip = [skip] if isinstance(skip, str) else list(skip)
        # Layers this optimizer does not update are not preconditioned (by exact name).
        extra = [re.escape(name) for name in outside if name]
        self.kfac = KFAC(model, **kfac_options, skip_layers=skip + extra)
        self._linked = False
        super().__init__(list(self.base.param_groups), self.base.defaults)
        self._link()

    def _link(self) -> None:
        # One set of groups and state, the base optimizer's: schedulers, GradScaler and the
        # user see and change the same dicts.
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self._linked = True

    def _layer_lrs(self) -> dict[str, float] | None:
        lrs: dict[str, float] = {}
        for group in self.param_groups:
            ids = {id(p) for p in group["params"]}
            for name, adapter in self.kfac._adapters.items():
                if id(adapter.module.weight) in ids and "lr" in group:
                    lrs[name] = float(group["lr"])
        return lrs if len(lrs) == len(self.kfac.layers) else None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Precondition, then take the base optimizer's step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients enabled).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.kfac.step(lr=self._layer_lrs())
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (its layers are not preconditioned: KFAC registers
        layers once, at construction)."""
        if not self.__dict__.get("_linked"):  # during torch.optim.Optimizer.__init__
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
        self._link()

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict`` plus the KFAC state under ``"curvature"`` (a
        collective under ``Distributed(grad_worker_fraction < 1)``, see :meth:`KFAC.state_dict`)."""
        state = self.base.state_dict()
        state[_KEY] = self.kfac.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the tensors follow the parameters' device.

        A checkpoint of another model or optimizer raises ``ValueError`` and changes nothing.
        """
        if not isinstance(state_dict, dict) or _KEY not in state_dict:
            raise ValueError(f"not a KFACOptimizer checkpoint (no {_KEY!r} entry)")
        state = dict(state_dict)
        pre = self.kfac._prepared_load(state.pop(_KEY))  # validated before anything changes
        self.base.load_state_dict(state)
        self._link()
        self.kfac._pre = pre
        self.kfac._window = []

    def __repr__(self) -> str:
        return f"KFACOptimizer(base={type(self.base).__name__}, {self.kfac!r})"
