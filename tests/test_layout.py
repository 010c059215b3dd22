"""The package tree is the architecture: no module imports (directly or through others) a
module that imports it back, each subpackage sits above the ones it uses, and the capability packages
(classification, detection, segmentation, sam, edgetam, roadmap) stand side by side on the one engine without
importing each other. docs/architecture.md draws the same picture."""
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


# The layers, bottom to top. A module may import its own layer and those below it, never above.
#   models (the model library)  <  data (shared formats), export (format backends: models and data only),
#   engine (the one training loop, its clocks and threads)  <  dense (backbone adapter, FPN, dense exporters)
#   <  capabilities (each alone, each owning its exporters)  <  runtime (bench, optimize), demo  <  commands, cli
CAPABILITIES = ("repvit.classification", "repvit.detection", "repvit.segmentation", "repvit.sam", "repvit.edgetam",
                "repvit.roadmap")
COMMAND_LINE = ("repvit.commands", "repvit.cli", "repvit.__main__")
TOP = ("repvit.runtime", "repvit.demo") + COMMAND_LINE
SHARED = ("repvit.engine", "repvit.data", "repvit.dense", "repvit.export")


def _package(name: str, packages) -> str | None:
    return next((p for p in packages if name == p or name.startswith(p + ".")), None)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer or sideways between capability packages."""
    bad = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            edge = f"{name} -> {target}"
            if _package(target, COMMAND_LINE) and not _package(name, COMMAND_LINE):
                bad.append(edge + " (the library never imports the command line)")
            elif name.startswith("repvit.models") and _package(target, (*CAPABILITIES, *TOP, *SHARED)):
                bad.append(edge + " (the model library imports nothing above it)")
            elif _package(name, ("repvit.export",)) and not _package(target, ("repvit.export", "repvit.models",
                                                                              "repvit.data", "repvit.version",
                                                                              "repvit._moved")):
                bad.append(edge + " (the format backends import only the model library and the data formats)")
            elif _package(name, SHARED) and _package(target, (*CAPABILITIES, *TOP)):
                bad.append(edge + " (engine, data, dense and export serve the capabilities and never import them)")
            elif name.startswith("repvit.engine") and _package(target, ("repvit.data", "repvit.dense",
                                                                        "repvit.export")):
                bad.append(edge + " (the engine knows no task's data, models or file formats)")
            elif name.startswith("repvit.data") and _package(target, ("repvit.dense", "repvit.engine",
                                                                      "repvit.export")):
                bad.append(edge + " (the data formats sit beside the model library, below the loop and exporters)")
            elif _package(name, CAPABILITIES) and _package(target, TOP):
                bad.append(edge + " (a capability never imports benchmarking, the demo or the command line)")
            elif (_package(name, CAPABILITIES) and _package(target, CAPABILITIES)
                  and _package(name, CAPABILITIES) != _package(target, CAPABILITIES)):
                bad.append(edge + " (capability packages never import each other: move what they share down)")
    return bad


def test_every_import_goes_down_a_layer_or_stays_in_its_package():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layering_check_catches_planted_imports():
    planted = {"repvit.sam.evaluation": {"repvit.detection.data", "repvit.models.checkpoint"},
               "repvit.engine.loop": {"repvit.segmentation.training", "repvit.models.reparam"},
               "repvit.models.layers": {"repvit.export.onnx"},
               "repvit.detection.training": {"repvit.engine.loop", "repvit.dense.backbone", "repvit.data.coco"},
               "repvit.segmentation.data": {"repvit.commands.segment"},
               "repvit.export.onnx": {"repvit.engine.progress", "repvit.sam.builder", "repvit.models.reparam"},
               "repvit.edgetam.export": {"repvit.export.onnx", "repvit.runtime.bench"},
               "repvit.engine.qat": {"repvit.export.litert", "repvit.engine.data"}}
    bad = layer_violations(planted)
    assert len(bad) == 8 and not any("detection.training" in b for b in bad), bad
    assert any(b.startswith("repvit.sam.evaluation -> repvit.detection.data") for b in bad)
    assert {b.split(" (")[0] for b in bad if b.startswith("repvit.export.onnx")} == {
        "repvit.export.onnx -> repvit.engine.progress", "repvit.export.onnx -> repvit.sam.builder"}
    assert [b.split(" (")[0] for b in bad if "edgetam" in b or "qat" in b] == [
        "repvit.edgetam.export -> repvit.runtime.bench", "repvit.engine.qat -> repvit.export.litert"]


def test_every_module_sits_in_a_layer():
    """A module outside every layer would escape the checks above (runtime/module_bench.py once did)."""
    known = (*CAPABILITIES, *TOP, *SHARED, "repvit.models")
    loose = [name for name in import_graph() if not _package(name, known)]
    assert sorted(loose) == ["repvit", "repvit._moved", "repvit.progress_bar", "repvit.testing", "repvit.version"], loose


# Parallel task packages (classification training, detection, segmentation) hold files of the same
# name for the same role (data.py: each task's data).
TASK_PACKAGES = ("classification", "detection", "segmentation", "sam", "edgetam")


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
