"""The one rule for a name that becomes a folder and part of file names: a split (OUT/{split}/,
its shards `{split}.mindrecordNNN`), whether it comes from a config, the command line or a data set."""
from __future__ import annotations

import re

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def split_name_problem(name) -> str | None:
    """None if `name` is a plain name (letters, digits, _ and - only: no path, no space), else why not."""
    if isinstance(name, str) and _PLAIN.fullmatch(name):
        return None
    return "not a plain name (letters, digits, _ and - only)"
