"""The package layout's rules, read from the imports of every module (README "Layout").

* ``numerics/`` imports only ``sncli.errors`` and itself: the maths stays testable on its own.
* ``formats/`` imports no engine, renderer or CLI: a reader knows its format and nothing else.
* only ``cli/`` imports typer; only ``render/`` and ``cli/`` import rich.
* no module imports torch, matplotlib, onnx or dask at import time (``sncli --help`` is instant).
* no import cycles between modules, counting imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sncli"
MODULES = sorted(PACKAGE.rglob("*.py"))
LAZY = (
    "torch",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "dask",
    "distributed",
    "scipy",
    "numpy",
    "safetensors",
)
#: What ``formats/`` may import from sncli: shared leaves, never an engine, renderer or CLI.
FORMAT_DEPENDENCIES = ("sncli.errors", "sncli.messages", "sncli.dtypes", "sncli.formats")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at module level?) for every import that runs (not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    type_only = {  # `if TYPE_CHECKING:` imports never run
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = []
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [f"{base}.{alias.name}" for alias in node.names]
            found += [(name, id(node) in top_level) for name in [base, *names]]
    return found


def sncli_imports(path: Path) -> set[str]:
    """The sncli modules a file imports (``from sncli.x import y`` counts as sncli.x)."""
    known = {module_name(p) for p in MODULES}
    result = set()
    for name, _ in imports(path):
        if name.startswith("sncli.") and name in known:
            result.add(name)
    return result


def in_package(path: Path, package: str) -> bool:
    return module_name(path) == f"sncli.{package}" or module_name(path).startswith(
        f"sncli.{package}."
    )


def test_the_layout_exists() -> None:
    """The rules below must see the packages they are about (a rule on no files proves nothing)."""
    for package in ("formats", "numerics", "render", "cli"):
        assert (PACKAGE / package / "__init__.py").is_file(), package
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_package_rules(path: Path) -> None:
    used = sncli_imports(path)
    external = {name.split(".")[0] for name, _ in imports(path)}
    if in_package(path, "numerics"):
        bad = {m for m in used if m != "sncli.errors" and not m.startswith("sncli.numerics")}
        assert not bad, f"numerics/ imports only errors and itself, not {sorted(bad)}"
    if in_package(path, "formats"):
        bad = {m for m in used if not m.startswith(FORMAT_DEPENDENCIES)}
        assert not bad, f"formats/ imports no engine, renderer or CLI: {sorted(bad)}"
    if not in_package(path, "cli"):
        assert "typer" not in external, "only cli/ imports typer"
        if not in_package(path, "render"):
            assert "rich" not in external, "only render/ and cli/ import rich"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_heavy_libraries_are_imported_lazily(path: Path) -> None:
    eager = {name.split(".")[0] for name, top in imports(path) if top}
    assert not eager & set(LAZY), f"import {sorted(eager & set(LAZY))} inside functions"


def test_no_import_cycles() -> None:
    graph = {module_name(p): sncli_imports(p) - {module_name(p)} for p in MODULES}
    # A package's __init__ importing its own submodules is how a package exposes them.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not t.startswith(name + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target] if target in stack else [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
