"""``python -m lowrank_online.demo``: the main job (see :mod:`lowrank_online.demo`)."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
