"""The predictor's layers, read from its source: no import cycles, and serving code never
reaches the development tools in ``predictor.dev``.

The graph is built with ``ast`` from every module's imports (module level and inside functions,
since a lazy import is still a dependency); ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "predictor"
#: commands: they may load a development tool on request (``make-tiny-model``)
COMMANDS = {"predictor.cli", "predictor.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (a package import counts its ``__init__``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# A package's __init__ importing its own submodules (the engines' registry) is not a cycle of
# layers: Python runs the package first. Cycles are sought between modules, so each package's
# __init__ is kept only where something imports the package itself.
def _without_own_init_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        module: {
            target
            for target in targets
            if not (module.startswith(target + ".") and target in graph)
        }
        for module, targets in graph.items()
    }


def test_the_graph_sees_the_layers() -> None:
    """The walker itself: it finds known edges, lazy ones included, and a planted cycle."""
    graph = import_graph()
    assert "predictor.journey" in graph["predictor.api.routes"]
    assert "predictor.dev.tiny_model" in graph["predictor.cli"]  # imported inside a function
    assert "predictor.engines.sr" in graph["predictor.engines"]  # a lazy factory
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(_without_own_init_edges(import_graph()))
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_serving_code_never_imports_dev_tools() -> None:
    graph = import_graph()
    offenders = {
        module: sorted(target for target in targets if target.startswith("predictor.dev"))
        for module, targets in graph.items()
        if not module.startswith("predictor.dev") and module not in COMMANDS
    }
    assert {module: dev for module, dev in offenders.items() if dev} == {}


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("predictor.journey", "predictor.api"),
        ("predictor.engines", "predictor.api"),
        ("predictor.engines", "predictor.queue"),
        ("predictor.storage", "predictor.journey"),
        ("predictor.loras", "predictor.api"),
        ("predictor.queue", "predictor.api"),
    ],
)
def test_dependencies_point_down(lower: str, upper: str) -> None:
    """The edge → the journey → engines and stores: a lower layer never imports a higher one."""
    graph = import_graph()
    upward = {
        module: sorted(t for t in targets if t == upper or t.startswith(upper + "."))
        for module, targets in graph.items()
        if module == lower or module.startswith(lower + ".")
    }
    assert {module: targets for module, targets in upward.items() if targets} == {}


def test_top_level_stays_small() -> None:
    """About a dozen modules at the top; everything else lives in a package named for its job."""
    top = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    assert len(top) <= 16, top
