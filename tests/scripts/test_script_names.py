"""A script folder is the first entry of ``sys.path`` when one of its scripts runs: a script
named like an installed package hides that package from every script of the folder (an
``evidence/distributed.py`` made ``from dask.distributed import Client`` fail in the others)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = ("evidence", "benchmarks", "examples")


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_script_is_named_like_an_installed_package(folder):
    shadowing = []
    for path in sorted((ROOT / folder).glob("*.py")):
        spec = importlib.util.find_spec(path.stem) if path.stem.isidentifier() else None
        origin = pathlib.Path(spec.origin).resolve() if spec is not None and spec.origin else None
        # Only an installed package is a finding: scripts of two folders of this repository may
        # share a name (each folder is first on sys.path only for its own scripts).
        if origin is not None and not origin.is_relative_to(ROOT):
            shadowing.append(f"{folder}/{path.name} hides {origin}")
    assert not shadowing, shadowing
