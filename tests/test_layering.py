"""Imports follow the data flow: prep -> mindrecords -> train/evaluate, both using model.

prep's bottom modules (label table, progress, atomic writes, errors) are what every stage shares;
nothing reaches into another stage's internals or back upstream.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("prep", "mindrecords", "model", "train", "evaluate", "configs")
SHARED = {"base.labels", "base.progress", "base.atomic", "prep.errors", "base.checksums", "base.ownership"}

# package -> the other packages' modules it may import ("pkg" = any module of it).
ALLOWED = {
    "prep": {"mindrecords.schema", "mindrecords.writer"},   # build writes through the shard writer
    "mindrecords": SHARED | {"configs", "base.resize"},
    "model": SHARED | {"configs"},
    "evaluate": SHARED | {"configs", "mindrecords", "model"},
    "train": SHARED | {"configs", "mindrecords", "model", "evaluate"},  # periodic validation
    "configs": SHARED,
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _allowed(module: str, allowed: set) -> bool:
    return module.split(".")[0] in allowed or any(module == a or module.startswith(a + ".") for a in allowed)


def test_packages_import_only_upstream_and_shared_modules():
    bad = []
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            own = f"{package}.{path.stem}"
            for module in _imports(path):
                top = module.split(".")[0]
                if top not in PACKAGES or top == package:
                    continue
                if own in SHARED or not _allowed(module, ALLOWED[package]):
                    bad.append(f"{path.relative_to(REPO)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_rule_catches_a_reach_back():
    assert not _allowed("evaluate.sliding_window", ALLOWED["mindrecords"])
    assert not _allowed("prep.build", ALLOWED["train"])
    assert _allowed("base.resize", ALLOWED["mindrecords"])
    assert _allowed("base.labels", ALLOWED["evaluate"])
