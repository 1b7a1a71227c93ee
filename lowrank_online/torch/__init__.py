"""K-FAC-family preconditioning of PyTorch models in two lines (imports torch).

:class:`KFAC` hooks a model's ``nn.Linear`` (any leading dimensions), ``nn.Conv2d`` and small
``nn.Embedding`` modules, feeds their statistics to a
:class:`~lowrank_online.curvature.KFACPreconditioner` and preconditions their ``.grad`` in place::

    kfac = KFAC(model, "bkfac")
    loss.backward(); kfac.step(); opt.step()

:class:`KFACOptimizer` wraps a base ``torch.optim`` optimizer and a :class:`KFAC` in one
``torch.optim.Optimizer``. :class:`Distributed` shares the curvature between the processes
of a ``torch.distributed`` group (``KFAC(..., distributed=True)``). Nothing else in the library
imports this package.
"""

from .distributed import Distributed, StepReport, assign_owners
from .kfac import KFAC
from .optim import KFACOptimizer

__all__ = ["KFAC", "Distributed", "KFACOptimizer", "StepReport", "assign_owners"]
