"""The main job: a short tour of the library's capabilities on the CPU, each result checked.

``python -m lowrank_online.demo`` runs every section (about a minute on 2 idle cores);
``--quick`` shrinks the sizes (about 10 s), ``--section NAME`` runs one section, ``--threads N``
limits the BLAS pools (by default to 1 thread when they would oversubscribe a loaded machine).
Every check prints its value, its tolerance and a verdict (``ok`` /
``FAILED``); the run ends with a one-line summary and exits with status 1 when a check failed.
Sections that need an optional package (scikit-learn for ``pca`` and the quick ``training``,
``dask[array]`` and ``distributed`` for ``dask``) are skipped with the reason when it is missing.

:func:`run` returns the sections' results (:class:`Section`, each with its :class:`Check` list);
:func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import _threads
from . import core, dask, kronecker, pca, training
from ._report import Check, Section, set_progress, summary

__all__ = ["SECTIONS", "Check", "Result", "Section", "expected_seconds", "main", "missing", "run"]


@dataclass(frozen=True)
class _Entry:
    run: Callable[[bool], Section]
    seconds: tuple[float, float]  # expected wall time (quick, full) on 2 idle cores
    requires: tuple[str, ...] = ()
    requires_quick: tuple[str, ...] = ()  # needed in quick mode only


# top-level module -> (what to install, the extra that brings it)
_PACKAGES = {
    "sklearn": ("scikit-learn", "demo"),
    "dask": ("dask[array]", "dask"),
    "distributed": ("distributed", "dask"),
}

SECTIONS: dict[str, _Entry] = {
    "core": _Entry(core.online_core, (0.5, 5)),
    "randomized": _Entry(core.randomized, (1, 4)),
    "solve": _Entry(core.solves, (0.2, 0.5)),
    "pca": _Entry(pca.section, (0.5, 2), requires=("sklearn",)),
    "kronecker": _Entry(kronecker.section, (0.2, 0.5)),
    "dask": _Entry(dask.section, (6, 15), requires=("dask", "distributed")),
    "training": _Entry(training.section, (1, 35), requires_quick=("sklearn",)),
}


def missing(name: str, quick: bool) -> str | None:
    """Why section ``name`` cannot run here (an optional package is not installed), or ``None``."""
    entry = SECTIONS[name]
    needed = entry.requires + (entry.requires_quick if quick else ())
    absent = [m for m in needed if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    packages = ", ".join(_PACKAGES[m][0] for m in absent)
    extras = ",".join(sorted({_PACKAGES[m][1] for m in absent}))
    return f'needs {packages}, not installed (pip install "lowrank_online[{extras}]")'


@dataclass
class Result:
    """The sections that ran (or were skipped), the one-line summary and the total wall time."""

    sections: list[Section] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def checks(self) -> list[Check]:
        return [c for s in self.sections for c in s.checks]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def summary(self) -> str:
        return summary(self.checks, [s.name for s in self.sections if s.skipped is not None])

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def expected_seconds(names: Sequence[str], quick: bool) -> float:
    """The expected wall time of these sections on 2 idle cores (skipped ones cost nothing)."""
    return sum(SECTIONS[n].seconds[0 if quick else 1] for n in names if missing(n, quick) is None)


def run(names: Sequence[str] | None = None, *, quick: bool = False,
        echo: Callable[[str], None] | None = print) -> Result:
    """Run the sections ``names`` (all by default) in order; ``echo`` receives the report line by line."""
    say = echo or (lambda _line: None)
    names = list(SECTIONS) if names is None else list(names)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"`names` must be among {list(SECTIONS)}, got {unknown}")
    result = Result()
    start = time.perf_counter()
    for name in names:
        say(f"== {name} ==")
        reason = missing(name, quick)
        t0 = time.perf_counter()
        section = Section(name, skipped=reason) if reason is not None else SECTIONS[name].run(quick)
        section.seconds = time.perf_counter() - t0
        result.sections.append(section)
        for line in section.text().splitlines():
            say(line)
        if reason is None:
            say(f"  [{section.seconds:.1f} s]")
        say("")
    result.seconds = time.perf_counter() - start
    say(result.summary)
    return result


def _apply_threads(requested: str) -> tuple[object, str | None]:
    """Apply ``--threads``; return what holds the limit and a note for the report (``None``: nothing to say)."""
    with warnings.catch_warnings():  # the note goes into the report instead
        warnings.simplefilter("ignore", _threads.OversubscriptionWarning)
        if requested != "auto":
            limits = _threads.limit_threads(int(requested))
            return limits, _threads.check_oversubscription()  # an explicit N can still oversubscribe
        note = _threads.check_oversubscription()
        if note is None:
            return None, None
        return _threads.limit_threads(1), (note.partition("; pass --threads")[0]
                                           + "; running with 1 thread (--threads N to choose)")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1 when a check failed)."""
    parser = argparse.ArgumentParser(prog="python -m lowrank_online.demo", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: about 10 s instead of a minute")
    parser.add_argument("--section", choices=list(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--threads", default="auto", metavar="N",
                        help="BLAS / OpenMP threads: a positive integer, or 'auto': 1 when the pools and the "
                             "machine's load would oversubscribe its cores, "
                             "the libraries' default otherwise")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")
    args = parser.parse_args(argv)
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) >= 1):
        parser.error(f"--threads must be a positive integer or 'auto', got {args.threads!r}")
    _limits, note = _apply_threads(args.threads)  # _limits holds the limit for the whole run
    set_progress(False if args.no_progress else None)
    names = args.section or list(SECTIONS)
    mode = "quick" if args.quick else "full"
    print("lowrank_online demo (CPU, NumPy backend)")
    print(f"expected: about {expected_seconds(names, args.quick):.0f} s ({mode}) on 2 idle cores, "
          "longer on a loaded machine")
    if note is not None:
        print(f"note: {note}")
    print()
    result = run(names, quick=args.quick)
    print(f"done in {result.seconds:.1f} s")
    return result.exit_code
