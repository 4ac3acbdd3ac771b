"""The package's shape: each layer imports only its own layer and the ones below, nothing
imports the root face ``diffusers_dynamic_loader``, no two modules import each other (directly
or around a circle), no module imports another's private names, and docs/development.md's
layout lists exactly the modules in the tree.

Run as a script to rewrite the layout in docs/development.md from the modules' docstrings:
``.venv/bin/python tests/unit/test_layout.py``.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "diffusers_backend"
DOC = REPO_ROOT / "docs" / "development.md"
# Top to bottom; a module may import from its own layer and the layers after it.
LAYERS = (("__main__", "serving"), ("engine",), ("tasks",), ("prompts", "media"), ("loading",),
          ("registry",), ("errors", "settings", "path_guard"))
BLOCK = re.compile(r"(<!-- generated: layout -->\n)(.*?)(<!-- end generated -->)", re.S)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return 0  # diffusers_backend/__init__.py: the package itself, above everything


@cache
def imports(type_only_too: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions (and, with
    ``type_only_too``, under ``if TYPE_CHECKING:`` as well)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        targets = found.setdefault(name, set())
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in (ast.walk(tree) if type_only_too else runtime_nodes(tree)):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
    known = set(found)
    return {m: {t for t in ts if t in known or t == "diffusers_dynamic_loader"} - {m}
            for m, ts in found.items()}


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def test_each_layer_imports_only_itself_and_lower_layers():
    wrong = [f"{source} ({layer_of(source)}) imports {target} ({layer_of(target)})"
             for source, targets in imports().items() for target in sorted(targets)
             if target.startswith("diffusers_backend.") and layer_of(target) < layer_of(source)]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_nothing_inside_imports_the_root_face():
    offenders = sorted(m for m, targets in imports().items()
                       if "diffusers_dynamic_loader" in targets)
    assert not offenders


def test_no_private_name_is_imported_from_another_module():
    """What modules share is public; a ``_name`` stays inside the module that defines it."""
    shared = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "diffusers_backend"):
                shared += [f"{module_name(path)} imports {node.module}.{alias.name}"
                           for alias in node.names
                           if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not shared, "\n".join(shared)


def test_no_import_circles():
    """Type-only imports count: a module that needs another's types to describe itself and
    is needed by it is one piece split in two (the engine's shared types live apart)."""
    graph = {m: {t for t in ts if t in imports(True) and not is_package_of(t, m)}
             for m, ts in imports(True).items()}
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, f"modules importing each other: {circles}"


def is_package_of(package: str, module: str) -> bool:
    """``from diffusers_backend.registry import x`` names the package, not a circle."""
    return module.startswith(package + ".")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_circle_check_can_fail():
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"], ["c"]]


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = (match.group(1) if match else text).rstrip(".") or "(no docstring)"
    return sentence if len(sentence) <= 160 else sentence[:157].rstrip() + "..."


def layout() -> str:
    """The layout block of docs/development.md: every module, by folder, layer order."""
    lines = []
    for names in LAYERS:
        for top in names:
            folder = PACKAGE / top
            paths = sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{top}.py"]
            for path in paths:
                rel = path.relative_to(REPO_ROOT).as_posix()
                lines.append(f"- `{rel}`: {summary(path)}")
    lines.append(f"- `diffusers_backend/__init__.py`: {summary(PACKAGE / '__init__.py')}")
    return "\n".join(lines) + "\n"


def test_the_layout_in_development_md_is_the_tree():
    match = BLOCK.search(DOC.read_text(encoding="utf-8"))
    assert match, "docs/development.md has no generated layout block"
    listed = set(re.findall(r"^- `([^`]+\.py)`", match.group(2), re.M))
    tree = {p.relative_to(REPO_ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert listed == tree, (f"missing: {sorted(tree - listed)}; gone: {sorted(listed - tree)}; "
                            "rewrite with `.venv/bin/python tests/unit/test_layout.py`")
    assert match.group(2) == layout(), "stale summaries; rewrite with the same command"


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(BLOCK.sub(lambda m: m.group(1) + layout() + m.group(3), text), encoding="utf-8")
    print(f"rewrote the layout of {DOC}")
    sys.exit(0)
