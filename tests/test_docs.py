"""The README and docs/ stay true to the repository: every file they (and the code's comments)
cite exists, every code name they cite in backticks (`package.module.function`,
`module.Class`, a config key such as `train.accumulate`) is defined, and the README stays an
entry page (at most 200 lines, none over 400 characters). Names are found with ast, so no
MindSpore import is needed."""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("base", "settings", "mindrecords", "prep", "model", "evaluate", "train", "configs", "docs", "bench", "tests")
CODE = ("base", "settings", "mindrecords", "prep", "model", "evaluate", "train", "bench")
CITED = re.compile(r"\b((?:%s)/[\w./-]+\.(?:py|md|yaml))\b" % "|".join(TOP))
# A whole backticked span that is a dotted name, optionally called: `a.b.c` or `a.b.c(x, y=1)`.
DOTTED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\([^`]*\))?`")
# The same with the first dot a slash: `base/device.all_reduce_counts`.
SLASHED = re.compile(r"`((?:%s)/\w+)\.([A-Za-z_]\w*)(?:\([^`]*\))?`" % "|".join(CODE))
PACKAGES = set(CODE) | {"cli", "tests"}
CONFIG_SECTIONS = ("seed", "device_target", "mode", "model", "data", "train", "eval")
# `cli.py`, `data.pkl`, `summary.json`: file names, which test_every_cited_file_exists covers.
FILE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "jsonl", "pkl", "pth", "npz", "npy", "ckpt", "mindir", "onnx",
                 "png", "jpg", "txt", "parquet", "db", "mp4", "avi"}


def _docs():
    yield REPO / "README.md"
    yield REPO / "CHANGELOG.md"
    yield from sorted((REPO / "docs").glob("*.md"))


def _sources():
    yield from (p for p in _docs() if p.is_file())
    yield REPO / "cli.py"
    for top in CODE:
        yield from sorted((REPO / top).glob("*.py"))


def _names_in(body) -> dict:
    """Top-level defs, classes and assigned names of a module or class body -> their node."""
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:  # a name a module re-exports counts as defined there
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


@lru_cache(maxsize=None)
def _module_names(path: Path) -> dict:
    return _names_in(ast.parse(path.read_text()).body)


def _module_file(parts) -> Path | None:
    base = REPO.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


@lru_cache(maxsize=None)
def _config_keys() -> frozenset:
    """Every dotted config key (sections included) from settings/schema.py's dataclasses."""
    tree = ast.parse((REPO / "settings" / "schema.py").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    keys = set()

    def walk(cls, prefix):
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                key = prefix + node.target.id
                keys.add(key)
                kind = ast.unparse(node.annotation)
                if kind in classes:
                    walk(classes[kind], key + ".")

    walk(classes["Config"], "")
    for node in tree.body:  # retired keys still load (and are cited as such)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "RETIRED" for t in node.targets):
            keys.update(ast.literal_eval(node.value))
    return frozenset(keys)


def unresolved(name: str) -> str | None:
    """Why a cited dotted name does not exist in this repository, or None if it does (or is not ours)."""
    if name in _config_keys():
        return None
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        path = _module_file(parts[:cut])
        if path is None:
            continue
        scope, rest = _module_names(path), parts[cut:]
        for i, part in enumerate(rest):
            node = scope.get(part)
            if node is None:
                return f"{'.'.join(parts[:cut + i])} has no {part!r} ({path.relative_to(REPO)})"
            scope = _names_in(node.body) if isinstance(node, ast.ClassDef) else {}
            if i + 1 < len(rest) and not scope:
                return f"{'.'.join(parts[:cut + i + 1])} is not a class ({path.relative_to(REPO)})"
        return None
    if parts[0] in CONFIG_SECTIONS:
        return "neither a config key (settings/schema.py) nor a module of this repository"
    if parts[0] in PACKAGES:
        return "no such module in this repository"
    return None  # another library's name (mindspore, numpy, torch, ...)


def cited_names(text: str) -> set:
    names = set(DOTTED.findall(text))
    names.update(f"{mod.replace('/', '.')}.{attr}" for mod, attr in SLASHED.findall(text)
                 if (REPO / f"{mod}.py").is_file())
    return {name for name in names if name.rsplit(".", 1)[1] not in FILE_SUFFIXES}


def test_every_cited_file_exists():
    missing = sorted({f"{src.relative_to(REPO)} cites {path}" for src in _sources()
                      for path in CITED.findall(src.read_text()) if not (REPO / path).is_file()})
    assert missing == []


def test_every_code_name_the_docs_cite_is_defined():
    wrong = sorted(f"{doc.relative_to(REPO)}: `{name}`: {why}" for doc in _docs() if doc.is_file()
                   for name in cited_names(doc.read_text()) if (why := unresolved(name)))
    assert wrong == []


def test_the_readme_is_an_entry_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference text into docs/"
    long = [f"line {i}: {len(line)} characters" for i, line in enumerate(lines, 1) if len(line) > 400]
    assert long == []


def test_the_docs_the_code_relies_on_are_there():
    for name in ("cityscapes.md", "model.md", "sliding_window.md", "training_recipe.md", "mindspore_notes.md",
                 "data-preparation.md", "input-pipeline.md", "weights.md", "inference.md", "training.md",
                 "errors.md", "benchmarks.md", "demo.md"):
        assert (REPO / "docs" / name).stat().st_size > 500, name
    assert not any("REFERENCE.md" in src.read_text() for src in _sources())


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    assert [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"docs/{p.name}" not in readme] == []


def test_the_pattern_finds_citations():
    assert CITED.findall("see `docs/model.md` and base/resize.py, not prep/labels.py.") == \
        ["docs/model.md", "base/resize.py", "prep/labels.py"]


def test_a_drifted_or_misspelled_name_is_caught():
    text = ("`mindrecords.reader.split_shard_files(OUT, split)` `mindrecords.manifest.split_shard_files` "
            "`base/device.all_reduce_counts` `train.accumulate` `train.optimizer.lr` `model.decoder.n_layers` "
            "`train.normalize.NormalizeBatch` `prep.build.FORMAT_VERSION` `mindspore.load(FILE)` `train.acumulate` "
            "`evaluate.nowhere.thing` `base/device.all_reduce_count` `data.shuffle_buffer` `cli.py` `data.pkl`")
    wrong = {name for name in cited_names(text) if unresolved(name)}
    assert wrong == {"mindrecords.reader.split_shard_files", "train.acumulate", "evaluate.nowhere.thing",
                     "base.device.all_reduce_count"}


LINK = re.compile(r"\]\(([^)\s#]+\.md)?(?:#([\w-]+))?\)")


def _anchors(path: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    heads = re.findall(r"^#+\s+(.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_link_between_the_docs_resolves():
    broken = []
    for doc in _docs():
        for target, anchor in LINK.findall(doc.read_text()):
            path = (doc.parent / target).resolve() if target else doc
            if not path.is_file():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
            elif anchor and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(REPO)} -> {target}#{anchor}")
    assert broken == []


def test_the_link_check_sees_a_missing_anchor():
    assert "make-sample-a-synthetic-cityscapes-tree" in _anchors(REPO / "docs" / "data-preparation.md")
    assert "no-such-heading" not in _anchors(REPO / "docs" / "data-preparation.md")
