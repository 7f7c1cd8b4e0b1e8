"""The package's imports point one way: each module imports only modules of its own layer or
the layers below (docs/ARCHITECTURE.md), never in a cycle, and never from inside a function.

Parsed from the source, so it holds for code no test happens to run.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "visual_reco"

# Lowest first. A module must be listed here to exist, so each new one gets a place.
LAYERS = {
    "standalone": ["dev_services"],
    "settings": ["conf", "choices", "databases", "models", "commit_hooks", "broker"],
    "pixels": ["images", "preprocessing", "colour", "aspects"],
    "embedders": ["embedders.base", "embedders.weights", "embedders.keras", "embedders.litert",
                  "embedders",
                  "query_photos"],
    "fields": ["registry", "fields", "rollout", "checks"],
    "queries": ["pk_rows", "modes", "diversity", "gallery", "query", "reasons", "result_cache",
                "inline_storage", "categories", "classifier", "fusion", "text_search",
                "versions", "photo_adapter", "photo_adapter_learning", "search"],
    "feedback": ["feedback", "feedback.ranking", "feedback.tokens", "feedback.visitors",
                 "feedback.experiments", "feedback.evidence", "feedback.similar",
                 "feedback.taste", "feedback.picks",
                 "feedback.events", "feedback.stats", "feedback.rollup", "feedback.retention",
                 "feedback.analytics", "feedback.learned", "feedback.learning"],
    "pipeline": ["embedding", "jobs", "signals", "model_switch", "tasks"],
    "surfaces": ["apps", "admin", "api", "api.serializers", "api.throttling", "api.views",
                 "api.urls",
                 "templatetags", "templatetags.visual_reco", "management",
                 "management.progress", "management.commands",
                 "management.commands.*", "evaluation", "evaluation.*", "migrations",
                 "migrations.*"],
}
# Function-level imports of visual_reco modules, allowed only to keep TensorFlow out of
# processes that do not need it.
LAZY_ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if module_name(p)}


def layer_of(name: str) -> int:
    for number, members in enumerate(LAYERS.values()):
        for member in members:
            if name == member or (member.endswith(".*") and name.startswith(member[:-1])):
                return number
    raise AssertionError(f"visual_reco.{name} is in no layer of tests/test_architecture.py")


def imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported visual_reco module, whether the import is inside a function)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                targets = [f"{child.module}.{alias.name}" for alias in child.names]
                targets = [t if t.removeprefix("visual_reco.") in known else child.module
                           for t in targets]
            for target in targets:
                if target.startswith("visual_reco."):
                    found.append((target.removeprefix("visual_reco."), nested))
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def graph() -> dict[str, list[tuple[str, bool]]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_point_down_the_layers():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in graph().items() for target, _ in targets
              if layer_of(target) > layer_of(name)]
    assert upward == []


def test_no_import_cycle():
    edges = {name: sorted({t for t, _ in targets if t != name})
             for name, targets in graph().items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in edges.get(name, []):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in edges:
        if name not in state:
            visit(name)


def test_no_function_level_imports_of_the_package():
    lazy = {(name, target) for name, targets in graph().items()
            for target, nested in targets if nested}
    assert lazy <= LAZY_ALLOWED, sorted(lazy - LAZY_ALLOWED)


def test_the_checker_sees_cycles_and_lazy_imports(tmp_path, monkeypatch):
    """The parser above is what the other tests trust: it must see both kinds of fault."""
    package = tmp_path / "visual_reco"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from visual_reco.b import x\n")
    (package / "b.py").write_text("def f():\n    from visual_reco import a\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    result = graph()
    assert result["a"] == [("b", False)] and result["b"] == [("a", True)]
