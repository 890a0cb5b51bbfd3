"""The tree's architecture, measured on the import graph (grimp, import-linter's
graph builder; docs/design.md, "Layout"): the layers in pyproject.toml hold,
there is no import circle between modules or between folders at any level,
and few modules sit directly under harness/."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="Requires import-linter (pip install '.[test]')")

ROOT = Path(__file__).resolve().parents[1]
MAX_TOP_MODULES = 10


def circles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def module_edges(package: str) -> dict[str, set[str]]:
    """Every import between the package's modules, function-local ones included."""
    graph = grimp.build_graph(package, include_external_packages=False)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def folder_edges(edges: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Imports between sibling folders/modules, at every level: a.b.c -> a.d.e
    is the edge a.b -> a.d (where they first differ)."""
    folders: dict[str, set[str]] = defaultdict(set)
    for source, targets in edges.items():
        for target in targets:
            s, t = source.split("."), target.split(".")
            common = 0
            while common < min(len(s), len(t)) and s[common] == t[common]:
                common += 1
            if common < len(s) and common < len(t):
                folders[".".join(s[: common + 1])].add(".".join(t[: common + 1]))
    return folders


@pytest.fixture(scope="module")
def harness_edges() -> dict[str, set[str]]:
    return module_edges("harness")


def test_no_import_circle_between_modules(harness_edges):
    assert circles(harness_edges) == []


def test_no_import_circle_between_folders_at_any_level(harness_edges):
    assert circles(folder_edges(harness_edges)) == []


def test_the_layers_hold():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_few_modules_at_the_top():
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """Negative control: a package with a circle between two folders and an
    import that breaks its layers."""
    pkg = tmp_path / "layered"
    for name, text in {
        "__init__.py": "",
        "top/__init__.py": "",
        "top/face.py": "from layered.low import ground\n",
        "low/__init__.py": "",
        "low/ground.py": "def f():\n    from layered.top import face  # back up\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    (tmp_path / "layers.toml").write_text(
        '[tool.importlinter]\nroot_package = "layered"\n'
        '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        'containers = ["layered"]\nlayers = ["top", "low"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    edges = module_edges("layered")
    assert circles(edges) == [["layered.low.ground", "layered.top.face"]]
    assert circles(folder_edges(edges)) == [["layered.low", "layered.top"]]
    from importlinter.cli import lint_imports

    monkeypatch.chdir(tmp_path)
    assert lint_imports(config_filename=str(tmp_path / "layers.toml")) == 1
    sys.modules.pop("layered", None)
