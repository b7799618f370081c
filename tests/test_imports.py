"""The house's layering, read from the source: no import cycle among r1's modules, rewards free
of models, trainers that never import each other, and function-level imports of another r1
package only where a comment says why (an optional dependency kept optional)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "r1"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The r1 module an imported dotted name lives in (longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, ast.stmt, bool]]:
    """(imported r1 module, the statement, whether it is inside a function) of `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    seen: set[tuple[str, int]] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] + [base]
            for name in names:
                target = _owner(name)
                inside_parent = module.startswith(f"{target}.") and MODULES[target].name == (
                    "__init__.py"
                )
                if target and target != module and not inside_parent:
                    if (target, child.lineno) not in seen:
                        seen.add((target, child.lineno))
                        found.append((target, child, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


GRAPH = {m: {t for t, _, _ in _imports(m)} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walk_sees_the_package():
    assert "r1.rl.step" in MODULES and "r1.train.loop" in MODULES
    assert "r1.train.state" in GRAPH["r1.rl.step"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("forbidden", ["r1.models", "r1.sampling", "r1.sharding", "r1.judge"])
def test_rewards_import_no_models(forbidden):
    bad = [
        (m, t)
        for m, targets in GRAPH.items()
        if m.startswith("r1.rewards")
        for t in targets
        if t == forbidden or t.startswith(f"{forbidden}.")
    ]
    assert bad == []


def test_trainers_and_tools_import_no_trainer():
    """Trainers never import each other; rejection sampling, evaluation, AOT and the training
    core build from r1.train, never from a trainer. (The pipeline and distillation run
    trainers as their stages, which is what they are for.)"""
    bad = []
    for module, targets in GRAPH.items():
        builder = module.startswith(("r1.rejection", "r1.evaluation", "r1.aot", "r1.train"))
        if module.endswith(".trainer") or builder:
            bad += [(module, t) for t in targets if t.endswith(".trainer")]
    assert bad == []


def test_function_level_imports_of_r1_say_why():
    """A function-level import of another r1 package must keep an optional dependency optional
    and say so in a comment on its line."""
    bad = []
    for module, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        own = ".".join(module.split(".")[:2])
        for target, node, in_function in _imports(module):
            same_package = target == own or target.startswith(f"{own}.")
            if not in_function or same_package:
                continue
            line = lines[node.lineno - 1]
            if " - " not in line.partition("#")[2]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert bad == []
