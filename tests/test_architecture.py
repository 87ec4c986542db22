"""The package structure: no import cycle, no arrow running back up (#16 point 1).

Every `import` of a tuneforge module counts, at module level or inside a function: a lazy import
hides a cycle from the interpreter, not from the design. Packages sit in layers; a module imports
from its own package or from a lower layer, and the four services never import each other — what
they share (adapters, dataset versions, suites, text similarity) lives below them, and the
collaborators one service offers another in the same process travel through the `Platform`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "services" / "tuneforge"

#: Lowest first. A package may import its own modules and those of lower layers only.
LAYERS: list[set[str]] = [
    {"v1", "contracts", "__init__"},  # the generated contracts and their generator
    {"common"},
    {"store"},
    {"models", "chat", "similarity"},
    {"catalog"},
    {"platform"},  # what one process shares, and the server bootstrap
    {"curation", "training", "inference", "evaluation"},
    {"services", "deploy"},
    {"client"},
    {"console", "cli", "demo", "web"},
]
SERVICES = {"curation", "training", "inference", "evaluation"}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tuneforge":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    name = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
                # `from tuneforge import evaluation` imports the package tuneforge.evaluation
                found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "tuneforge")
    return {module for module in found if module.startswith("tuneforge")}


def _graph() -> dict[str, set[str]]:
    """Package → the packages it imports (tuneforge's own, module level or not; generated code skipped)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        source = _package(_module_name(path))
        for target in map(_package, _imports(path)):
            if source and target and target != source:
                edges[source].add(target)
    return edges


def _layer(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"tuneforge.{package} sits in no layer: add it to LAYERS")


def test_every_package_sits_in_a_layer() -> None:
    packages = {path.name for path in ROOT.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    packages |= {path.stem for path in ROOT.glob("*.py")}
    for package in packages:
        _layer(package)


def test_no_arrow_runs_back_up_and_services_do_not_import_each_other() -> None:
    upward = sorted(
        f"tuneforge.{source} -> tuneforge.{target}"
        for source, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(source) or (source in SERVICES and target in SERVICES)
    )
    assert upward == [], upward


def test_no_import_cycle_between_packages() -> None:
    graph = _graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif len(path) < len(graph) + 1:
                visit(target, [*path, target])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == [], cycles[:5]


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """A function-level import is an arrow too (the cycle curation ↔ evaluation hid behind one)."""
    module = tmp_path / "tuneforge" / "curation" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from tuneforge.evaluation.suite_store import SuiteStore\n    return SuiteStore\n")
    assert "tuneforge.evaluation.suite_store" in _imports_at(module, tmp_path)
    module.write_text("def f():\n    from tuneforge import evaluation\n    return evaluation\n")
    assert "tuneforge.evaluation" in _imports_at(module, tmp_path)


def _imports_at(path: Path, root: Path) -> set[str]:
    global ROOT
    saved, ROOT = ROOT, root / "tuneforge"
    try:
        return _imports(path)
    finally:
        ROOT = saved


def test_evaluation_generates_through_its_own_platform_s_inference(tmp_path: Path, keys_file: Path) -> None:
    """The in-process inference frontend travels through the Platform, not a class attribute: an
    evaluation service sees only the frontend of the platform it runs on."""
    from conftest import make_settings

    from tuneforge.evaluation.answers import LocalAnswers
    from tuneforge.evaluation.server import EvaluationComponent
    from tuneforge.platform import Platform

    ours = Platform(make_settings(tmp_path / "ours", keys_file))
    theirs = Platform(make_settings(tmp_path / "theirs", keys_file))
    evaluation = EvaluationComponent(ours)
    theirs.local_inference = object()  # another platform's frontend in the same process
    assert evaluation.source() is None
    frontend = object()
    ours.local_inference = frontend
    source = evaluation.source()
    assert isinstance(source, LocalAnswers) and source.frontend is frontend
    ours.close()
    theirs.close()


def test_the_architecture_note_names_every_layer_and_every_table() -> None:
    """docs/architecture.md stays in step with the code: each package of LAYERS and each table of the
    metadata store appears in it (who owns it, who reads it)."""
    from tuneforge.store.tables import Base

    note = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    missing = [f"tuneforge.{p}" for layer in LAYERS for p in layer if p != "__init__" and p not in note]
    missing += [f"table {t}" for t in Base.metadata.tables if f"`{t}`" not in note]
    assert missing == [], missing
