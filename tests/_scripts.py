"""Load a script of the repository (``evidence/*.py``, ``examples/*.py``) as a module, for tests."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(folder: str, name: str):
    # As ``python FOLDER/NAME.py`` would, put the script's folder first on sys.path: the
    # scripts import their folder's shared modules by bare name.
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module
