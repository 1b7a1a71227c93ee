"""What the evidence scripts share: where their tables and figures go, and matplotlib.

The scripts run as ``python evidence/NAME.py``, so this folder is on ``sys.path`` and they
import this module by its bare name (the tests load them the same way).
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "evidence"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or None without matplotlib (the
    ``plot`` extra): the scripts then print their tables and skip the figures."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def publish(text: str, res: Any, plot: Callable[[Any, pathlib.Path], bool], *, table: str, figure: str,
            output_dir: str | None, quick: bool) -> None:
    """Write the table ``text`` and the figure ``plot(res, path)`` into ``output_dir`` when it
    is given, else into docs/evidence for a full run; a ``--quick`` run alone writes nothing."""
    out = output_dir or (None if quick else DOCS)
    if out is None:
        return
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / table).write_text(text)
    if plot(res, folder / figure):
        print(f"wrote {folder / table} and {folder / figure}", file=sys.stderr)
    else:
        print(f"wrote {folder / table} (no figure: matplotlib is not installed)", file=sys.stderr)
