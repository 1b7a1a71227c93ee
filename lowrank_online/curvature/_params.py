"""Declarative parameter constraints, in the style of scikit-learn's ``_param_validation``.

A constraint is an object with ``accepts(value) -> bool`` and a ``describe()`` text; a
parameter is valid when one of its constraints accepts it, and the error names the parameter,
every accepted form and the value received. One table of constraints per configuration keeps
the checks reviewable in one place instead of scattered through constructors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__: list[str] = []


class Interval:
    """Real or integer numbers in an interval; ``None`` bounds are unbounded.

    ``closed`` is one of ``"both"``, ``"left"``, ``"right"``, ``"neither"``.
    """

    def __init__(self, kind: type, low: float | None, high: float | None, *, closed: str = "both") -> None:
        if kind not in (numbers.Integral, numbers.Real):
            raise ValueError(f"kind must be numbers.Integral or numbers.Real, got {kind}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if self.kind is numbers.Real and not math.isfinite(float(value)):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return lo_ok and hi_ok

    def describe(self) -> str:
        what = "an integer" if self.kind is numbers.Integral else "a finite real number"
        if self.low is None and self.high is None:
            return what
        lo = "[" if self.closed in ("both", "left") and self.low is not None else "("
        hi = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{what} in {lo}{low}, {high}{hi}"


class Options:
    """One of a fixed set of values (strings, typically)."""

    def __init__(self, options: Sequence[Any]) -> None:
        self.options = tuple(options)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, type(self.options[0])) and value in self.options

    def describe(self) -> str:
        return f"one of {list(self.options)}"


class Schedule:
    """A callable of the step (the papers' rank / damping schedules); checked at each use."""

    def accepts(self, value: Any) -> bool:
        return callable(value)

    def describe(self) -> str:
        return "a callable of the step"


class Boolean:
    """``True`` or ``False`` exactly (no truthy strings such as ``"no"``)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "a bool"


class NoneValue:
    def accepts(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"


def validate(values: Mapping[str, Any], constraints: Mapping[str, Sequence[Any]]) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first parameter no constraint accepts.

    ``TypeError`` when the value has a type none of the constraints could accept (a string for
    a number), ``ValueError`` when the type is right and the value is out of range.
    """
    for name, allowed in constraints.items():
        value = values[name]
        if any(c.accepts(value) for c in allowed):
            continue
        forms = " or ".join(c.describe() for c in allowed)
        raise (ValueError if _right_type(value, allowed) else TypeError)(f"`{name}` must be {forms}, got {value!r}")


def _right_type(value: Any, allowed: Sequence[Any]) -> bool:
    for c in allowed:
        if isinstance(c, Interval) and isinstance(value, c.kind) and not isinstance(value, bool):
            return True
        if isinstance(c, Options) and isinstance(value, type(c.options[0])):
            return True
    return False


def scheduled(value: Any, step: int, name: str, constraint: Interval) -> Any:
    """The value of a constant-or-callable parameter at ``step``, checked against ``constraint``.

    A schedule that returns a bad value (NaN damping, a fractional rank) is refused here with
    an error naming the parameter and the step, instead of producing NaN steps downstream.
    """
    out = value(step) if callable(value) else value
    if constraint.kind is numbers.Integral and isinstance(out, numbers.Real) and not isinstance(out, bool):
        out = int(out) if float(out).is_integer() else out
    if not constraint.accepts(out):
        where = f"`{name}({step})`" if callable(value) else f"`{name}`"
        raise ValueError(f"{where} must be {constraint.describe()}, got {out!r}")
    return int(out) if constraint.kind is numbers.Integral else float(out)


def as_schedule(value: Any) -> Callable[[int], Any]:
    """A callable of the step for a constant or callable parameter (for callers that want one)."""
    return value if callable(value) else (lambda step: value)
