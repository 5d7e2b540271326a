"""Every file the README, docs/ and the code's comments cite exists in the repository (nothing
points outside it, e.g. to a notes file only the authors have)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("base", "settings", "mindrecords", "prep", "model", "evaluate", "train", "configs", "docs", "bench", "tests")
CODE = ("base", "settings", "mindrecords", "prep", "model", "evaluate", "train", "bench")
CITED = re.compile(r"\b((?:%s)/[\w./-]+\.(?:py|md|yaml))\b" % "|".join(TOP))


def _sources():
    yield REPO / "README.md"
    yield from sorted((REPO / "docs").glob("*.md"))
    yield REPO / "cli.py"
    for top in CODE:
        yield from sorted((REPO / top).glob("*.py"))


def test_every_cited_file_exists():
    missing = sorted({f"{src.relative_to(REPO)} cites {path}" for src in _sources()
                      for path in CITED.findall(src.read_text()) if not (REPO / path).is_file()})
    assert missing == []


def test_the_docs_the_code_relies_on_are_there():
    for name in ("cityscapes.md", "model.md", "sliding_window.md", "training_recipe.md", "mindspore_notes.md"):
        assert (REPO / "docs" / name).stat().st_size > 500, name
    assert not any("REFERENCE.md" in src.read_text() for src in _sources())


def test_the_pattern_finds_citations():
    assert CITED.findall("see `docs/model.md` and base/resize.py, not prep/labels.py.") == \
        ["docs/model.md", "base/resize.py", "prep/labels.py"]
