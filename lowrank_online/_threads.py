"""Thread pools of the BLAS / OpenMP libraries: a limit for the command-line tools, and a warning
when they oversubscribe the machine.

On a shared machine, BLAS pools that each start one thread per core busy-wait against each other
and against the other processes: the same demo ran in 1m44s on an idle 2-core machine and in
19 min on a loaded one. The tools call :func:`check_oversubscription` once at start and offer
``--threads N``, which :func:`limit_threads` applies (threadpoolctl for NumPy's BLAS and OpenMP,
``torch.set_num_threads`` for PyTorch when it is loaded).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

__all__: list[str] = []

_warned = False


class OversubscriptionWarning(UserWarning):
    """The thread pools and the machine's load exceed its cores: timings will suffer."""


def _pools() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # threadpoolctl is optional: without it nothing is checked or limited
        return []
    return threadpool_info()


def busy_cores() -> float:
    """Cores already busy with other work: the 1-minute load average (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def check_oversubscription(*, load: float | None = None, cores: int | None = None) -> str | None:
    """Warn once (:class:`OversubscriptionWarning`) and return the message when a thread pool of
    more than one thread plus the machine's load exceed its cores by half; ``None`` otherwise
    (one thread is all a loaded machine can be asked for)."""
    global _warned
    cores = cores or os.cpu_count() or 1
    load = busy_cores() if load is None else load
    threads = max((p.get("num_threads", 1) for p in _pools()), default=1)
    torch = sys.modules.get("torch")
    if torch is not None:
        threads = max(threads, torch.get_num_threads())
    if threads <= 1 or threads + load <= 1.5 * cores:
        return None
    message = (f"{threads} BLAS/OpenMP threads on {cores} cores with a load of {load:.1f}: the pools oversubscribe "
               f"the machine and timings can be several times slower than on an idle one; pass --threads 1")
    if not _warned:
        _warned = True
        warnings.warn(message, OversubscriptionWarning, stacklevel=2)
    return message


def limit_threads(n: int | None) -> Any:
    """Limit the BLAS / OpenMP pools (and PyTorch's) to ``n`` threads for the rest of the process;
    returns the threadpoolctl controller (None without threadpoolctl or when ``n`` is None)."""
    if n is None:
        return None
    if n < 1:
        raise ValueError(f"`threads` must be a positive integer, got {n}")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        os.environ["OMP_NUM_THREADS"] = str(n)  # applies to pools started after this point only
        return None
    return threadpool_limits(limits=n)
