"""The package layout's rules, read from the imports of every module (README "Layout").

* ``numerics/`` imports only ``sncli.errors``, ``sncli.arrays`` (NumPy arrays in place of torch
  tensors) and itself: the maths stays testable on its own.
* ``formats/`` imports no engine, renderer or CLI: a reader knows its format and nothing else.
* only ``cli/`` imports typer; only ``render/`` and ``cli/`` import rich.
* no module imports torch, matplotlib, onnx or dask at import time (``sncli --help`` is instant).
* ``run/`` imports no engine (only the checkpoint façade, formats and shared leaves), and
  ``lipschitz/`` no CLI.
* no import cycles between modules, counting imports inside functions too, and counting
  ``import sncli`` / ``from sncli import x`` (which run ``sncli/__init__``, importing the engines).
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
FORMAT_DEPENDENCIES = (
    "sncli.errors",
    "sncli.messages",
    "sncli.dtypes",
    "sncli.arrays",
    "sncli.formats",
)
#: What ``numerics/`` may import from sncli besides itself.
NUMERICS_DEPENDENCIES = ("sncli.errors", "sncli.arrays")
#: What ``run/`` may import from sncli: how work runs knows checkpoints, not what is computed.
RUN_DEPENDENCIES = (*FORMAT_DEPENDENCIES, "sncli.checkpoint", "sncli.run", "sncli._version")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> list[tuple[str, bool]]:
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
    package = (name or module_name(path)).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
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


def sncli_imports(path: Path, name: str | None = None) -> set[str]:
    """The sncli modules a file imports (``from sncli.x import y`` counts as sncli.x;
    ``import sncli`` and ``from sncli import x`` count as the package ``sncli`` itself)."""
    known = {module_name(p) for p in MODULES}
    result = set()
    for imported, _ in imports(path, name):
        if (imported == "sncli" or imported.startswith("sncli.")) and imported in known:
            result.add(imported)
    return result


def in_package(path: Path, package: str) -> bool:
    return module_name(path) == f"sncli.{package}" or module_name(path).startswith(
        f"sncli.{package}."
    )


def test_the_layout_exists() -> None:
    """The rules below must see the packages they are about (a rule on no files proves nothing)."""
    for package in ("formats", "numerics", "render", "cli", "lipschitz", "run"):
        assert (PACKAGE / package / "__init__.py").is_file(), package
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_package_rules(path: Path) -> None:
    used = sncli_imports(path)
    external = {name.split(".")[0] for name, _ in imports(path)}
    if in_package(path, "numerics"):
        bad = {
            m for m in used if m not in NUMERICS_DEPENDENCIES and not m.startswith("sncli.numerics")
        }
        assert not bad, f"numerics/ imports only errors, arrays and itself, not {sorted(bad)}"
    if module_name(path) == "sncli.arrays":
        assert not used, f"sncli.arrays is a leaf (formats/ and numerics/ import it): {used}"
    if in_package(path, "formats"):
        bad = {m for m in used if not m.startswith(FORMAT_DEPENDENCIES)}
        assert not bad, f"formats/ imports no engine, renderer or CLI: {sorted(bad)}"
    if in_package(path, "run"):
        bad = {m for m in used if not m.startswith(RUN_DEPENDENCIES)}
        assert not bad, f"run/ imports no engine, renderer or CLI: {sorted(bad)}"
    if in_package(path, "lipschitz"):
        bad = {m for m in used if m.startswith("sncli.cli")}
        assert not bad, f"lipschitz/ imports no CLI: {sorted(bad)}"
    if not in_package(path, "cli"):
        assert "typer" not in external, "only cli/ imports typer"
        if not in_package(path, "render"):
            assert "rich" not in external, "only render/ and cli/ import rich"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_heavy_libraries_are_imported_lazily(path: Path) -> None:
    eager = {name.split(".")[0] for name, top in imports(path) if top}
    assert not eager & set(LAZY), f"import {sorted(eager & set(LAZY))} inside functions"


def own_submodules_dropped(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ importing its own submodules is how a package exposes them; not so
    the root ``sncli``, whose __init__ imports the engines (that edge is a real one)."""
    return {
        name: {t for t in targets if name == "sncli" or not t.startswith(name + ".")}
        for name, targets in graph.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target] if target in stack else [target]
            if target not in state:
                found = visit(target, [*stack, target])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    graph = {module_name(p): sncli_imports(p) - {module_name(p)} for p in MODULES}
    cycle = find_cycle(own_submodules_dropped(graph))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_import_sncli(tmp_path: Path) -> None:
    """The cycle the first layout test missed: a module importing the package ``sncli`` (for
    its version) while ``sncli/__init__`` imports the engine that imports that module."""
    graph = {
        "sncli": {"sncli.analysis"},
        "sncli.analysis": {"sncli.pipeline"},
        "sncli.pipeline": {"sncli.cluster"},
        "sncli.cluster": {"sncli"},
    }
    assert find_cycle(own_submodules_dropped(graph)) == [
        "sncli",
        "sncli.analysis",
        "sncli.pipeline",
        "sncli.cluster",
        "sncli",
    ]
    source = tmp_path / "module.py"
    source.write_text("def f():\n    import sncli\n    from sncli import checkpoint\n")
    assert sncli_imports(source, "sncli.module") == {"sncli", "sncli.checkpoint"}
