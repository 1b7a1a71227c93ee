"""What a demo section returns: checks with their tolerance and verdict, measured lines, timing."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Check", "Section", "best_time", "faster_or_slower", "progress", "progress_shown", "set_progress", "summary"]


@dataclass(frozen=True)
class Check:
    """One figure against its tolerance: ``value <= tolerance`` (``relation="<="``) or
    ``value >= tolerance`` (``">="``); a NaN value never passes."""

    name: str
    value: float
    tolerance: float
    passed: bool
    relation: str = "<="
    section: str = ""

    @classmethod
    def make(cls, name: str, value: float, tolerance: float, relation: str = "<=", section: str = "") -> Check:
        if relation not in ("<=", ">="):
            raise ValueError(f"`relation` must be '<=' or '>=', got {relation!r}")
        value = float(value)
        ok = math.isfinite(value) and (value <= tolerance if relation == "<=" else value >= tolerance)
        return cls(name, value, float(tolerance), bool(ok), relation, section)

    @property
    def verdict(self) -> str:
        return "ok" if self.passed else "FAILED"

    def line(self) -> str:
        return (
            f"  {self.verdict:<6}  {self.name}: {_fmt(self.value)} (tolerance {self.relation} {_fmt(self.tolerance)})"
        )


def _fmt(x: float) -> str:
    if x == 0 or (math.isfinite(x) and float(x).is_integer() and abs(x) < 1e6):
        return f"{x:.0f}" if float(x).is_integer() else f"{x:g}"
    return f"{x:.3g}" if 1e-2 <= abs(x) < 1e4 else f"{x:.1e}"


@dataclass
class Section:
    """A section's result: the lines it measured, its checks, its wall time, or why it was skipped."""

    name: str
    title: str = ""
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None

    def line(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def check(self, name: str, value: float, tolerance: float, relation: str = "<=") -> Check:
        c = Check.make(name, value, tolerance, relation, section=self.name)
        self.checks.append(c)
        return c

    def text(self) -> str:
        if self.skipped is not None:
            return f"  (skipped: {self.skipped})"
        return "\n".join([self.title, *self.lines, *(c.line() for c in self.checks)])


def summary(checks: Sequence[Check], skipped: Iterable[str] = ()) -> str:
    """One line: how many checks, and which failed (``section: name``) if any."""
    failed = [c for c in checks if not c.passed]
    n = len(checks)
    text = (f"{n} checks, all within tolerance" if not failed else
            f"{n} checks, {len(failed)} FAILED: " + "; ".join(f"{c.section}: {c.name}" for c in failed))
    skipped = list(skipped)
    if skipped:
        text += f" ({', '.join(skipped)} skipped)"
    return text


def best_time(fn: Callable[[], Any], repeat: int = 3, *, warmup: bool = True) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call unless ``warmup=False``)
    and the last result; the best of several is what a shared machine measures most reliably."""
    out = fn() if warmup else None
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def faster_or_slower(ours: float, theirs: float) -> str:
    """``"3.2x faster"`` / ``"1.5x slower"`` / ``"as fast"``: ``ours`` against ``theirs`` (seconds)."""
    if ours <= 0 or theirs <= 0:
        return "not measurable"
    ratio = theirs / ours
    if 0.95 <= ratio <= 1.05:
        return "about as fast"
    factor = ratio if ratio > 1 else 1 / ratio
    return f"{factor:.{0 if factor >= 10 else 1}f}x {'faster' if ratio > 1 else 'slower'}"


_PROGRESS = {"enabled": None}


def progress(iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm bar on stderr (off when stderr is not a terminal, or with ``--no-progress``; plain
    iteration without tqdm)."""
    if _PROGRESS["enabled"] is False:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the demo extra; without it the sections run silently
        return iterable
    return tqdm(iterable, desc=f"  {desc}", total=total, leave=False, disable=None)


def progress_shown() -> bool:
    """Whether :func:`progress` draws bars (for code that draws its own, such as the training loop)."""
    if _PROGRESS["enabled"] is False or importlib.util.find_spec("tqdm") is None:
        return False
    return bool(_PROGRESS["enabled"]) or sys.stderr.isatty()


def set_progress(enabled: bool | None) -> None:
    """``False`` turns the bars off; ``None`` shows them when stderr is a terminal."""
    _PROGRESS["enabled"] = enabled
