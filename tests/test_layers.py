"""The import graph of the package against the layers stated in docs/layout.rst: no circle, no
upward import, every module placed."""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lowrank_online"


def _layers() -> list[list[str]]:
    """The numbered list after the ``.. layers`` comment of docs/layout.rst."""
    text = (ROOT / "docs" / "layout.rst").read_text()
    block = text[text.index(".. layers") :].split("\n\n", 2)[1]
    items = re.split(r"^\d+\. ", block, flags=re.M)[1:]
    return [re.findall(r"``([\w.*]+)``", item) for item in items]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    # Imports under ``if TYPE_CHECKING:`` are annotations only: not a dependency at run time.
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # ``from . import brand`` imports the module brand; ``from .brand import f``, brand
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _layer_of(name: str, layers: list[list[str]]) -> int | None:
    short = "lowrank_online" if name == "lowrank_online" else name.removeprefix("lowrank_online.")
    for exact in (True, False):
        for level, entries in enumerate(layers):
            for entry in entries:
                if (entry == short) if exact else ("*" in entry and fnmatch.fnmatchcase(short, entry)):
                    return level
    return None


def test_the_layers_page_lists_the_layers():
    layers = _layers()
    assert len(layers) >= 8 and all(layers)
    assert "_array" in layers[0] and "cli" in layers[-1]


def test_every_module_is_placed_in_a_layer():
    layers = _layers()
    unplaced = sorted(name for name in _modules() if _layer_of(name, layers) is None)
    assert not unplaced, f"place these modules in docs/layout.rst: {unplaced}"


def test_no_module_imports_a_higher_layer():
    layers, modules = _layers(), _modules()
    upward = []
    for name, path in modules.items():
        mine = _layer_of(name, layers)
        for target in _imports(name, path, modules):
            theirs = _layer_of(target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{name} (layer {mine + 1}) imports {target} (layer {theirs + 1})")
    assert not upward, "\n".join(sorted(upward))


def test_the_import_graph_has_no_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # Tarjan's strongly connected components: a component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The rules can fail: a planted circle and a planted upward import are found."""
    fake = tmp_path / "lowrank_online"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "_array.py").write_text("from . import cli\n")
    (fake / "cli.py").write_text("from ._array import x\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "layout.rst").write_text((ROOT / "docs" / "layout.rst").read_text())
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    modules = _modules()
    assert _imports("lowrank_online._array", modules["lowrank_online._array"], modules) == {"lowrank_online.cli"}
    try:
        test_no_module_imports_a_higher_layer()
    except AssertionError as err:
        assert "lowrank_online._array (layer 1) imports lowrank_online.cli" in str(err)
    else:
        raise AssertionError("the upward import was not found")
    try:
        test_the_import_graph_has_no_circle()
    except AssertionError as err:
        assert "lowrank_online._array" in str(err) and "lowrank_online.cli" in str(err)
    else:
        raise AssertionError("the circle was not found")
