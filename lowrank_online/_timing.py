"""Wall-clock timing for the demos and the ratio tables (never used by the algorithms)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeat: int = 3, *, warmup: bool = True,
          budget: float = math.inf) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` and the result of the last call.

    One untimed warm-up call comes first unless ``warmup=False``; after ``budget`` seconds no
    further call starts (at least one always runs).
    """
    out = fn() if warmup else None
    best = math.inf
    start = time.perf_counter()
    for i in range(repeat):
        if i and time.perf_counter() - start > budget:
            break
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
