"""One user-facing error: every package's error class derives from base.errors.UserError, and the
command line catches it once (no command catches a package's errors itself)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

from base.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("base", "settings", "mindrecords", "pipelines", "prep", "model", "weights", "analysis", "deploy",
            "evaluate", "train")


def error_classes():
    """(module, class name) of every top-level exception class the packages define."""
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and any(
                        getattr(b, "id", "").endswith(("Error", "Exception", "Missing", "Exceeded")) for b in node.bases):
                    yield f"{package}.{path.stem}", node.name


def test_every_package_error_is_a_user_error():
    found = list(error_classes())
    assert ("weights.checkpoint", "CheckpointError") in found and len(found) >= 12
    for module, name in found:
        cls = getattr(importlib.import_module(module), name)
        if name.startswith("_"):  # a module's private signal, never raised past it
            continue
        assert issubclass(cls, UserError), f"{module}.{name} does not derive from base.errors.UserError"


def test_the_command_line_catches_errors_once():
    tree = ast.parse((REPO / "cli.py").read_text())
    handlers = [h for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.type is not None]
    names = {n.id for h in handlers for n in ast.walk(h.type) if isinstance(n, ast.Name)}
    defined = {name for _, name in error_classes()} - {"UserError"}
    assert names & defined == set(), f"cli.py catches package errors itself: {sorted(names & defined)}"
    assert sum(isinstance(n, ast.Name) and n.id == "UserError" for h in handlers for n in ast.walk(h.type)) == 1


def test_a_user_error_carries_its_path_and_message():
    err = UserError("not found", "a/b.ckpt")
    assert (str(err), err.path, err.message) == ("a/b.ckpt: not found", "a/b.ckpt", "not found")
    assert str(UserError("plain")) == "plain"
