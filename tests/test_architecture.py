"""The engine's shape: modules small enough to read, imports flowing one way, no UI in the core.

Read from the source (``ast``), so every import counts: at the top, inside a function, or under
``TYPE_CHECKING`` (a circle there still means two modules that cannot be understood apart).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "search_core"
#: A module has one reason to change and a few hundred lines at most.
MAX_LINES = 400
#: Longer modules that predate the limit; they may shrink, never grow.
KNOWN_LONGER = {"audio.py": 422, "webguard.py": 468, "models/paddlespeech_weights.py": 424}
#: Only the faces may import the service (the one face of the engine); the rooms below it never do:
#: the CLI, the evaluation, the HTTP API and the page's tabs (search_core/ui/).
FACE_USERS = {"search_core.__main__", "search_core.evaluate", "search_core.http_api"}
UI = "search_core.ui"
#: The web side: the page, the HTTP API and their guard; the engine never imports them.
WEB = {UI, "search_core.http_api", "search_core.webguard"}
UI_PACKAGES = ("gradio", "app")


def _is_face(mod: str) -> bool:
    return mod in FACE_USERS or mod == UI or mod.startswith(UI + ".")


def _is_web(mod: str) -> bool:
    return mod in WEB or mod.startswith(UI + ".")


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``({module: package modules it imports}, {module: top-level outside packages it imports})``."""
    mods = _modules(root)
    inner: dict[str, set[str]] = {m: set() for m in mods}
    outer: dict[str, set[str]] = {m: set() for m in mods}

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    full = f"{base}.{node.module}" if node.module else base
                else:
                    full = node.module or ""
                # ``from . import x``: x may be a module of its own
                targets = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full for a in node.names]
            for t in targets:
                if t.split(".")[0] == root.name:
                    target = resolve(t)
                    if target and target != mod:
                        inner[mod].add(target)
                else:
                    outer[mod].add(t.split(".")[0])
    return inner, outer


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_inside_search_core():
    inner, _ = import_graph()
    cycle = find_cycle(inner)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_rooms_do_not_import_the_service():
    inner, _ = import_graph()
    users = {m for m, deps in inner.items() if "search_core.service" in deps and not _is_face(m)}
    assert not users, f"only the CLI, evaluation, HTTP API and page call the service; also imported by {users}"


def test_the_core_never_imports_the_ui():
    inner, outer = import_graph()
    ui = {m: sorted(set(deps) & set(UI_PACKAGES)) for m, deps in outer.items()
          if set(deps) & set(UI_PACKAGES) and not (m == UI or m.startswith(UI + "."))}
    assert not ui, f"the core imports the UI: {ui}"
    web = {m: sorted(d for d in deps if _is_web(d)) for m, deps in inner.items()
           if not _is_web(m) and any(_is_web(d) for d in deps)}
    assert not web, f"the engine imports the web side: {web}"


def test_every_module_is_a_few_hundred_lines_at_most():
    too_long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > KNOWN_LONGER.get(rel, MAX_LINES):
            too_long[rel] = n
    assert not too_long, f"longer than {MAX_LINES} lines (split by reason to change): {too_long}"


def test_the_checks_see_a_circle_and_a_ui_import(tmp_path):
    """The graph is read from every import form; a circle through a lazy import is found."""
    pkg = tmp_path / "search_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\nimport gradio as gr\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n")
    inner, outer = import_graph(pkg)
    assert inner["search_core.b"] == {"search_core.sub.c"}
    assert inner["search_core.sub.c"] == {"search_core.a"}
    assert find_cycle(inner) == ["search_core.a", "search_core.b", "search_core.sub.c", "search_core.a"]
    assert "gradio" in outer["search_core.b"]
