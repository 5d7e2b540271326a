"""Imports run one way: each package imports only the layers below it, and no modules import
each other in a cycle (imports inside functions count too). LAYERS is the one list: the README's
layout table is checked against it.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS = {
    "base": set(),
    "settings": {"base"},
    "mindrecords": {"base", "settings"},
    "pipelines": {"base", "settings", "mindrecords"},
    "prep": {"base", "settings", "mindrecords"},
    "model": {"base", "settings"},
    "weights": {"base", "settings", "model"},
    "analysis": {"base", "settings", "model"},
    "deploy": {"base", "settings", "model", "weights"},
    "evaluate": {"base", "settings", "mindrecords", "pipelines", "model", "weights", "analysis", "deploy"},
    "train": {"base", "settings", "mindrecords", "pipelines", "model", "weights", "analysis", "evaluate"},
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import mod` imports the module pkg.mod when there is one.
            yield from (f"{node.module}.{alias.name}" if (REPO / node.module.replace(".", "/") / f"{alias.name}.py")
                        .is_file() else node.module for alias in node.names)


def module_graph() -> dict[str, set]:
    """module -> the project modules it imports."""
    modules = {f"{p.parent.name}.{p.stem}": p for package in LAYERS for p in (REPO / package).glob("*.py")}
    modules["cli"] = REPO / "cli.py"
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set]) -> list | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
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


def layer_violations(graph: dict[str, set]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        package = module.split(".")[0]
        for target in targets:
            top = target.split(".")[0]
            if top == "cli":
                bad.append(f"{module} imports cli (the command line is the top, nothing imports it)")
            elif package != "cli" and top != package and top not in LAYERS[package]:
                bad.append(f"{module} imports {target} ({package} may import {sorted(LAYERS[package]) or 'nothing'})")
    return sorted(bad)


def test_packages_import_only_the_layers_below():
    assert layer_violations(module_graph()) == []


def test_no_import_cycle_between_modules():
    assert find_cycle(module_graph()) is None


def test_the_layers_themselves_form_no_cycle():
    assert find_cycle(LAYERS) is None


def test_the_graph_sees_every_kind_of_import():
    graph = module_graph()
    assert "mindrecords.manifest" in graph["mindrecords.verify"]  # from X import name
    assert "train.step" in graph["train.loop"]  # an import inside a function
    assert "base.labels" in graph["base.overlay"]


def test_the_checks_catch_a_reach_back_and_a_cycle():
    assert layer_violations({"pipelines.eval_pipeline": {"model.segmenter"}}) != []
    assert layer_violations({"prep.build": {"train.loop"}}) != []
    assert layer_violations({"train.loop": {"evaluate.evaluator", "base.labels"}}) == []
    assert find_cycle({"train.step": {"train.block_step"}, "train.block_step": {"train.step"}}) == \
        ["train.block_step", "train.step", "train.block_step"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def readme_layers() -> dict[str, set]:
    """package -> the packages the README's layout table says it may import."""
    table = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("/`") and cells[2]:
            may = cells[2]
            table[cells[0].strip("`/")] = set() if may == "nothing" else {p.strip() for p in may.split(",")}
    return table


def test_the_readme_layout_table_is_the_list_of_layers():
    assert readme_layers() == LAYERS
