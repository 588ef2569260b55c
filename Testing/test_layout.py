"""The engine's architecture, checked from its source: imports flow one way between the layers named
in ``SAMFusionLib/__init__.py``, no module imports itself back through others, and only the MRML
adapter imports ``slicer``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "SAMFusionLib"

# Lower numbers are lower layers; a module may import its own package and packages of lower rank.
RANK = {
    "errors": 0,
    "device": 1, "background": 1, "imaging": 1,
    "sam": 2, "registration": 2, "fusion": 2,
    "pipeline": 3,
    "scene": 4, "cases": 4,
    "annotation": 5, "training": 5, "bench": 5,
    "batch": 6, "web": 6,
    "cli": 7,
}


def module_name(path: Path, root: Path = LIB) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; the engine uses absolute SAMFusionLib imports")
            names.add(node.module)
            # "from SAMFusionLib.scene import mrml" imports the module SAMFusionLib.scene.mrml
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def engine_graph(root: Path = LIB) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        if source == "SAMFusionLib":
            continue
        for target in targets:
            if target == "SAMFusionLib" or layer(target) == layer(source):
                continue
            if RANK[layer(target)] >= RANK[layer(source)]:
                bad.append(f"{source} -> {target}")
    return sorted(bad)


def test_every_package_has_a_rank_and_a_docstring():
    packages = {p.parent.name for p in LIB.glob("*/__init__.py")}
    top_modules = {p.stem for p in LIB.glob("*.py")} - {"__init__"}
    assert packages | top_modules == set(RANK)
    for package in packages:
        docstring = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text()))
        assert docstring and len(docstring) > 100, f"{package}/__init__.py needs its one-paragraph docstring"


def test_at_most_ten_top_level_modules_and_none_too_long():
    assert len(list(LIB.glob("*.py"))) <= 10
    long = {str(p.relative_to(LIB)): n for p in LIB.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long


def test_no_import_cycle():
    assert find_cycle(engine_graph()) is None


def test_imports_flow_down_the_layers():
    assert layering_violations(engine_graph()) == []


def test_only_the_mrml_adapter_imports_slicer():
    importers = sorted(module_name(p) for p in LIB.rglob("*.py")
                       if any(m == "slicer" or m.startswith("slicer.") for m in imported_modules(p)))
    assert importers == ["SAMFusionLib.scene.mrml"]


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    # The same checks over a small package that breaks both rules.
    root = tmp_path / "SAMFusionLib"
    for package in ("imaging", "sam"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "imaging" / "io.py").write_text("from SAMFusionLib.sam import models\n")
    (root / "sam" / "models.py").write_text("from SAMFusionLib.imaging.io import x\n")
    graph = engine_graph(root)
    assert find_cycle(graph) in (["SAMFusionLib.imaging.io", "SAMFusionLib.sam.models", "SAMFusionLib.imaging.io"],
                                 ["SAMFusionLib.sam.models", "SAMFusionLib.imaging.io", "SAMFusionLib.sam.models"])
    assert layering_violations(graph) == ["SAMFusionLib.imaging.io -> SAMFusionLib.sam", "SAMFusionLib.imaging.io -> SAMFusionLib.sam.models"]
    with pytest.raises(AssertionError, match="relative import"):
        (root / "sam" / "zoom.py").write_text("from .models import y\n")
        engine_graph(root)


def test_the_extension_installs_the_run_path_without_benchmarks_or_training():
    import re

    cmake = (LIB / "CMakeLists.txt").read_text()
    installed = set(re.search(r"set\(_installed_packages ([a-z ]+)\)", cmake).group(1).split())
    packages = {p.parent.name for p in LIB.glob("*/__init__.py")}
    left = {"bench", "training", "batch", "web", "cli"}
    assert packages - installed == left
    # Nothing the extension installs may import what it leaves out.
    graph = engine_graph()
    left_out = [f"{s} -> {t}" for s, targets in graph.items() for t in targets
                if (layer(s) in installed or s.count(".") == 1 and layer(s) in RANK) and layer(t) in left and layer(s) not in left]
    assert left_out == []
