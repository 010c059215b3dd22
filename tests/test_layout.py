"""The package tree is the architecture: no module imports (directly or through others) a
module that imports it back, and each subpackage sits above the ones it uses."""
from __future__ import annotations

import ast
from pathlib import Path

import repvit

ROOT = Path(repvit.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> repvit modules it imports anywhere in its body (lazy imports included)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                module = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                targets.append(module)
                targets += [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    # A module may name its own parent packages (``from . import config``): Python has
    # initialised them already, so only edges to non-ancestors can close a cycle.
    graph = {k: {t for t in v if not k.startswith(t + ".")} for k, v in import_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_model_library_never_imports_the_layers_above_it():
    above = ("repvit.classification", "repvit.export", "repvit.runtime", "repvit.commands", "repvit.cli")
    for name, targets in import_graph().items():
        if name.startswith("repvit.models"):
            bad = sorted(t for t in targets if t.startswith(above))
            assert not bad, f"{name} imports {bad}"
        if not name.startswith(("repvit.commands", "repvit.cli", "repvit.__main__")):
            assert not any(t.startswith(("repvit.commands", "repvit.cli")) for t in targets), \
                f"{name} imports the command line"


# Parallel task packages (classification training, detection, segmentation) hold files of the same
# name for the same role (data.py: each task's data).
TASK_PACKAGES = ("classification", "detection", "segmentation", "sam")


def test_one_name_one_meaning():
    """Outside the command line (whose modules are named after sub-commands) and the parallel task
    packages, no two modules share a name."""
    stems: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py" and "commands" not in path.relative_to(ROOT).parts:
            key = f"{path.parent.name}:{path.stem}" if path.parent.name in TASK_PACKAGES else path.stem
            stems.setdefault(key, []).append(str(path.relative_to(ROOT)))
    dupes = {k: v for k, v in stems.items() if len(v) > 1}
    assert not dupes, f"modules sharing a name in different places: {dupes}"
