"""The package's shape: layers import one way, no module or package imports itself back, the core imports
nothing of Enclave's. Read from the source (every import, lazy ones too), so it holds for every code path."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "enclave"

# Each layer may import the layers below it; packages of one layer never import each other.
LAYERS = {"core": 0, "engine": 1, "knowledge": 1, "moderation": 1, "chat": 2, "adapters": 3, "api": 4, "cli": 5}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The first-party modules `module` imports anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: set(_imports(m, p, modules)) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_layer() -> None:
    unplaced = sorted(m for m in _graph() if m != "enclave" and _layer(m) not in LAYERS)
    assert not unplaced, f"modules outside the layers {sorted(LAYERS)}: {unplaced}"


def test_no_module_imports_itself_back() -> None:
    assert _cycles(_graph()) == []


def test_no_package_imports_itself_back() -> None:
    graph = _graph()
    for depth in (2, 3):  # enclave.chat ↔ enclave.api, enclave.api.routers ↔ enclave.api
        packages: dict[str, set[str]] = {}
        for module, targets in graph.items():
            here = ".".join(module.split(".")[:depth])
            packages.setdefault(here, set()).update(
                t for t in (".".join(t.split(".")[:depth]) for t in targets) if t != here
            )
        assert _cycles(packages) == [], f"packages at depth {depth} import each other"


def _breaches(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here in LAYERS and there in LAYERS and here != there and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} → {target}")
    return sorted(wrong)


def test_layers_import_downwards_and_the_core_imports_nothing_of_ours() -> None:
    wrong = _breaches(_graph())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
    core = {t for m, ts in _graph().items() if _layer(m) == "core" for t in ts if _layer(t) != "core"}
    assert core == set()


def test_the_checker_sees_a_cycle_and_a_layer_breach() -> None:
    """The checks above would fail on the shapes they forbid (a checker that finds nothing proves nothing)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _breaches({"enclave.core.x": {"enclave.chat.y"}, "enclave.engine.e": {"enclave.knowledge.k"}}) == [
        "enclave.core.x → enclave.chat.y",
        "enclave.engine.e → enclave.knowledge.k",
    ]
    assert _breaches({"enclave.chat.y": {"enclave.core.x", "enclave.chat.z"}}) == []
    graph = _graph()
    assert "enclave.core.settings" in graph["enclave.chat.pipeline"]  # imports are read, lazy ones included
    assert "enclave.knowledge.store" in graph["enclave.api.state"]
