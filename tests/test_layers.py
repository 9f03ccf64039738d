"""The shape of the code: the core's modules import each other without a cycle (a cycle is a layer
leaning the wrong way), and the core never imports a built-in plug-in (they reach it only through
the plug-in manager, as third-party ones do)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "mercli"


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions, except under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for branch in ast.walk(tree)
               if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
               for node in ast.walk(branch)}
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in CORE.rglob("*.py")}
    return {name: {other for other in imported_names(path) if other in modules and other != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or ``None``."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    return next(filter(None, (visit(node) for node in sorted(graph) if node not in state)), None)


def test_the_core_has_no_import_cycle():
    assert find_cycle(core_graph()) is None, " -> ".join(find_cycle(core_graph()) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_never_imports_a_builtin_plugin():
    offenders = {module_name(path): sorted(name for name in imported_names(path) if name.startswith("mer_plugins"))
                 for path in CORE.rglob("*.py")}
    assert not {module: names for module, names in offenders.items() if names}


def test_the_network_depends_on_torch_and_the_shared_words_alone():
    """model.py reads in one sitting, as nanoGPT's does: no data loading, no configuration."""
    imported = imported_names(CORE / "model.py")
    assert {name for name in imported if name.startswith("mercli")} <= {"mercli.vocabulary", "mercli.vocabulary.UNKNOWN_MODALITY"}


def test_a_plugin_imports_only_the_public_contract():
    """Built-in plug-ins and the example plug-in reach the core through ``mercli.plugin_api`` alone."""
    root = CORE.parent
    offenders = {}
    for path in [*(root / "mer_plugins").rglob("*.py"), *(root / "examples").rglob("*.py")]:
        used = {name for name in imported_names(path) if name == "mercli" or name.startswith("mercli.")}
        beyond = {name for name in used if not name.startswith("mercli.plugin_api")}
        if beyond:
            offenders[str(path.relative_to(root))] = sorted(beyond)
    assert not offenders


def test_the_public_contract_exports_what_it_names():
    import mercli.plugin_api as plugin_api

    assert all(hasattr(plugin_api, name) for name in plugin_api.__all__)
    assert len(set(plugin_api.__all__)) == len(plugin_api.__all__)
